"""The settings module a Django project names in DJANGO_SETTINGS_MODULE.

A worker started with ``DJANGO_SETTINGS_MODULE=djangoish.settings`` uses minitask's
DjangoLoader, which reads INSTALLED_APPS here and imports ``<app>.tasks`` for every app that
has one. Django's own apps are skipped, and nothing of Django is ever imported. Settings for
minitask may live here too, with their plain or early Celery names (``CELERY_IMPORTS``, ...).
"""

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "djangoish.blog",
    "djangoish.shop.apps.ShopConfig",    # an AppConfig path names the same app
    "djangoish.pages",
]
