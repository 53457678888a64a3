"""``celeryconfig.py`` of Celery's "First Steps with Celery" tutorial, as the tutorial writes it
(Celery 5's lower-case setting names, which minitask reads: README, Configuration).

``broker_url = 'pyamqp://'`` is the local broker's default URL here (README: "BROKER_URL is
minitask://HOST:PORT"); the tests point clients and workers at their own broker with
MINITASK_BROKER_URL, which overrides it. ``timezone = 'Europe/Oslo'`` needs Python 3.9's
zoneinfo (README, Periodic tasks: "on 3.8 such a name is a ConfigurationError at start").
"""

import sys

broker_url = 'minitask://127.0.0.1:5679'
result_backend = 'rpc://'

task_serializer = 'json'
result_serializer = 'json'
accept_content = ['json']
timezone = 'Europe/Oslo' if sys.version_info >= (3, 9) else 'UTC'
enable_utc = True
