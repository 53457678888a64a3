"""A shop app, installed by its AppConfig path ("djangoish.shop.apps.ShopConfig")."""
