"""A small Django project for examples/14_django_loader.py; it runs without Django too.

``djangoish.settings`` is its settings module: a plain module with INSTALLED_APPS. The apps
``blog`` and ``shop`` have a ``tasks`` module; ``pages`` has none.
"""
