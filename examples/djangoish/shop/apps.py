"""Where a Django app keeps its AppConfig.

The example runs with or without Django installed: with it, the worker calls
``django.setup()``, which wants a real ``django.apps.AppConfig`` here; without it, minitask
reads the app's package from the INSTALLED_APPS entry and never imports this module.
"""

try:
    from django.apps import AppConfig
except ImportError:                     # no Django: nothing reads the class but its name
    AppConfig = object


class ShopConfig(AppConfig):
    name = "djangoish.shop"
