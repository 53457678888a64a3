"""``proj/celery.py`` of Celery's "Next Steps" tutorial, the minitask way.

Celery's file::

    from celery import Celery

    app = Celery('proj',
                 broker='amqp://',
                 backend='rpc://',
                 include=['proj.tasks'])

    # Optional configuration, see the application user guide.
    app.conf.update(
        result_expires=3600,
    )

There is no app object here (README, "Migrating from Celery"): a task registers itself when
its module is imported, and what Celery's app is given are settings, spelled as Celery spells
them in a settings module (README, Configuration). So this module is the project's settings
module (``MINITASK_CONFIG_MODULE=tutorialproj.celery``), and ``app.config_from_object(...)``
of the "First Steps" tutorial is the star import below.
"""

from tutorialproj.celeryconfig import *  # noqa: F401,F403  (app.config_from_object)

broker_url = 'minitask://127.0.0.1:5679'    # broker='amqp://': the local broker's default
result_backend = 'rpc://'                   # backend='rpc://'
include = ['tutorialproj.tasks']            # include=['proj.tasks']

# app.conf.update(...)
result_expires = 3600
