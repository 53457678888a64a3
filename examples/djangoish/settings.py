"""The settings module a Django project names in DJANGO_SETTINGS_MODULE.

A worker started with ``DJANGO_SETTINGS_MODULE=djangoish.settings`` uses minitask's
DjangoLoader, which imports ``<app>.tasks`` for every app in INSTALLED_APPS that has one
(after ``django.setup()`` when Django is installed; without Django it reads INSTALLED_APPS
here and skips Django's own apps). Settings for minitask may live here too, with their plain
or early Celery names (``CELERY_IMPORTS``, ...).
"""

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "djangoish.blog",
    "djangoish.shop.apps.ShopConfig",    # an AppConfig path names the same app
    "djangoish.pages",
]
