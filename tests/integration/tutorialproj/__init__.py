"""The project of Celery's "Next Steps" tutorial (docs/getting-started/next-steps.rst), laid out
as the tutorial lays it out (``proj/__init__.py``, ``proj/celery.py``, ``proj/tasks.py``), with
``tutorialproj`` for ``proj``. As in the tutorial's example project, this file is empty.

``proj/celery.py`` makes the app: ``Celery('proj', broker=..., backend=..., include=[...])``
and ``app.conf.update(result_expires=3600)``. minitask has no app object (README, "Migrating
from Celery"): what the app is given are settings, which minitask reads from a settings module
under Celery's names (README, Configuration), so ``tutorialproj/celery.py`` is that module
(``MINITASK_CONFIG_MODULE=tutorialproj.celery``), and ``tutorialproj/celeryconfig.py`` is the
"First Steps" tutorial's ``celeryconfig.py``, which it loads as ``app.config_from_object``
would. Used by test_tutorialidioms.py.
"""
