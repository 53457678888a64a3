"""Where a Django app keeps its AppConfig.

In a real project this class subclasses ``django.apps.AppConfig``; minitask reads the app's
package from the INSTALLED_APPS entry and never imports this module (nor Django).
"""


class ShopConfig:
    name = "djangoish.shop"
