"""Loaders: where the configuration comes from, and which task modules a worker imports.

A worker must register every task a client may send it, and messages carry only task names,
so at start it asks the loader to import the task modules:

    get_loader(settings)  ->  LOADER setting ("pkg.module.ClassName", "default" or "django")
                              else DjangoLoader if DJANGO_SETTINGS_MODULE is set
                              else DefaultLoader
    loader.on_worker_init() -> import_default_modules(): IMPORTS, plus <app>.tasks for every
                               Django app that has one (DjangoLoader); in the worker, and
                               again in each pool process started by spawn or forkserver
    loader.on_worker_process_init()   in every pool process, before it takes a task
    loader.on_task_init(task_id, task)   in the pool process, before each task

`DefaultLoader` and `DjangoLoader` read the settings module exactly as `config` finds it
(MINITASK_CONFIG_MODULE, else DJANGO_SETTINGS_MODULE, else minitaskconfig), so the loader and
`config.get_settings()` never disagree. `config` imports this module only inside a function,
to call a custom loader's own `read_configuration()`; this module imports `config` freely.

Django is imported only when DJANGO_SETTINGS_MODULE is set and Django is installed: the
worker then calls ``django.setup()`` before any loader hook (`minitask.worker.djangofixup`),
and DjangoLoader takes the apps from Django's app registry. Without Django, the settings
module is read as a plain module and an app's `tasks` submodule is looked for on disk before
anything of the app is imported, so apps without tasks (Django's own among them) are never
touched.
"""

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading

from minitask import config
from minitask.exceptions import ConfigurationError

__all__ = [
    "BaseLoader", "DefaultLoader", "DjangoLoader", "loader_class", "get_loader", "current_loader",
    "app_modules",
]

logger = logging.getLogger(__name__)

_BUILTIN = {"default": "minitask.loaders.DefaultLoader", "django": "minitask.loaders.DjangoLoader"}


class BaseLoader:
    """The hooks a worker calls; subclass it (or `DefaultLoader`) and name it in LOADER.

    `settings` is the `Settings` to use, None for `config.get_settings()` at each use. A
    subclass's `__init__` must accept it. `read_configuration` is called while the settings
    load, so it must not ask for them.
    """

    def __init__(self, settings=None):
        self._settings = settings

    @property
    def settings(self):
        return config.get_settings() if self._settings is None else self._settings

    def read_configuration(self):
        """Return {setting: value} from this loader's source; they rank above the settings
        module and below the environment. The base loader has no source."""
        return {}

    def import_default_modules(self):
        """Import every module named in IMPORTS, in order, and return them."""
        return [self.import_module(name) for name in dict.fromkeys(self.settings.IMPORTS)]

    def on_worker_init(self):
        """Called as the worker starts, before it takes messages: register the tasks.

        A pool process started by spawn or forkserver calls it too, since it inherits nothing
        of the worker's set-up; a forked one has it all already.
        """
        self.import_default_modules()

    def on_worker_process_init(self):
        """Called in every pool process once it is set up, before it takes a task; nothing by
        default. If it raises, the process does not start (the worker backs off and retries)."""

    def on_task_init(self, task_id, task):
        """Called in the pool process before each task runs; a hook, nothing by default."""

    def import_module(self, name):
        """Import `name`; any failure, in the module or finding it, is one ConfigurationError.

        The cause stays chained, so a log of the error still has the module's traceback.
        """
        try:
            return importlib.import_module(name)
        except Exception as exc:   # a user's module: any bug in it is a configuration problem
            raise ConfigurationError(f"cannot import {name!r}: {_describe(exc)}") from exc


class DefaultLoader(BaseLoader):
    """Reads the settings module as `config` finds it and imports IMPORTS."""

    def read_configuration(self):
        module = config.find_settings_module()
        return {} if module is None else config.read_settings_module(module)


class DjangoLoader(DefaultLoader):
    """Also imports ``<app>.tasks`` for every app in the Django settings' INSTALLED_APPS.

    Chosen when DJANGO_SETTINGS_MODULE is set. Apps without a `tasks` module are skipped;
    an app that cannot be found, or a `tasks` module that fails, is a ConfigurationError.
    """

    def import_default_modules(self):
        modules = super().import_default_modules()
        for name in self.task_module_names():
            module = self.import_module(name)
            if module not in modules:
                modules.append(module)
        return modules

    def task_module_names(self):
        """Return "<app>.tasks" for each installed app that has one, found without importing."""
        names = []
        for entry in self.installed_apps():
            package = _app_package(entry)
            if package == "django" or package.startswith("django."):
                continue   # Django's own apps have no tasks, and importing them needs Django
            if not _module_exists(package):
                raise ConfigurationError(f"INSTALLED_APPS entry {entry!r}: "
                                         f"no module named {package!r}")
            if not _module_exists(package + ".tasks"):
                logger.debug("app %s has no tasks module", package)
                continue
            names.append(package + ".tasks")
        return names

    def installed_apps(self):
        """Return the installed apps: from Django's app registry once Django is set up, else
        INSTALLED_APPS from the module named by DJANGO_SETTINGS_MODULE."""
        name = os.environ.get("DJANGO_SETTINGS_MODULE")
        if not name:
            raise ConfigurationError("DjangoLoader: DJANGO_SETTINGS_MODULE is not set")
        registry = sys.modules.get("django.apps")
        if registry is not None and registry.apps.ready:
            return [app.name for app in registry.apps.get_app_configs()]
        apps = getattr(config.import_settings_module(name), "INSTALLED_APPS", ())
        if not isinstance(apps, (list, tuple)) or not all(isinstance(a, str) and a for a in apps):
            raise ConfigurationError(f"INSTALLED_APPS in {name!r}: expected a list of app names, "
                                     f"got {apps!r}")
        return list(apps)


def loader_class(path=None, environ=None):
    """Return the loader class named by `path`, else the one the environment calls for.

    `path` is "pkg.module.ClassName" or "default"/"django" (early Celery's short names).
    """
    if not path:
        environ = os.environ if environ is None else environ
        return DjangoLoader if environ.get("DJANGO_SETTINGS_MODULE") else DefaultLoader
    dotted = _BUILTIN.get(path.lower(), path)
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name or not class_name:
        raise ConfigurationError(f"LOADER={path!r}: expected pkg.module.ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:   # a user's module: any failure is a configuration problem
        raise ConfigurationError(f"LOADER={path!r}: cannot import {module_name!r}: "
                                 f"{_describe(exc)}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigurationError(f"LOADER={path!r}: {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseLoader)):
        raise ConfigurationError(f"LOADER={path!r}: expected a subclass of "
                                 f"minitask.loaders.BaseLoader, got {cls!r}")
    return cls


def get_loader(settings=None):
    """Return a new loader for `settings` (default: the settings in force)."""
    settings = config.get_settings() if settings is None else settings
    return loader_class(settings.LOADER)(settings)


_lock = threading.Lock()
_current = (None, None)   # (settings, loader made for them)


def current_loader():
    """Return the loader for the settings in force, made again when they change."""
    global _current
    settings = config.get_settings()
    with _lock:
        if _current[0] is not settings:
            _current = (settings, get_loader(settings))
        return _current[1]


def app_modules(spec):
    """The task modules Celery's ``-A spec`` stands for: ``proj``, ``proj:app`` -> ``["proj"]``,
    plus ``proj.tasks`` when `proj` is a package that has one.

    minitask has no application object: tasks register themselves when their module is
    imported, so the attribute after ``:`` (Celery's app) is not needed and is not looked at.
    The ``tasks`` submodule is where Celery's ``autodiscover_tasks()`` looks; it is found on
    disk, without importing anything.
    """
    module = spec.partition(":")[0].strip()
    if not module or any(not part.isidentifier() for part in module.split(".")):
        raise ConfigurationError(f"-A {spec!r}: expected a module name, e.g. -A proj")
    names = [module]
    try:
        if _module_exists(module) and _module_exists(module + ".tasks"):
            names.append(module + ".tasks")
    except (ImportError, ValueError):
        pass        # a parent that cannot be found: importing `module` will say so
    return names


def import_app_package(spec):
    """Import the package ``-A spec`` names, when it is a package, before any setting is read.

    Celery's Django layout says where the settings are in it: ``proj/__init__.py`` imports
    ``proj/celery.py``, which sets DJANGO_SETTINGS_MODULE. A Django project's package can
    import no models at the top (Django itself imports it before its apps are ready), so
    this is safe; a plain module waits for the settings and ``django.setup()``, as ``-I``
    modules do, since it may import models. A failure is one ConfigurationError."""
    module = spec.partition(":")[0].strip()
    if "." in module or module in sys.modules:
        return
    try:
        found = importlib.util.find_spec(module)    # a top-level name: imports nothing
    except (ImportError, ValueError):
        return                          # not there: importing it later says so
    if found is None or found.submodule_search_locations is None:
        return
    try:
        importlib.import_module(module)
    except Exception as exc:   # a user's package: any bug in it is a configuration problem
        raise ConfigurationError(f"cannot import {module!r}: {_describe(exc)}") from exc


def _app_package(entry):
    """Return an INSTALLED_APPS entry's package: "blog" and "blog.apps.BlogConfig" -> "blog".

    An AppConfig path is recognised by its capitalised last part, Django's convention; Django
    would read the package from the class, but importing the class would import Django.
    """
    parts = entry.split(".")
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts.pop()
        if len(parts) > 1 and parts[-1] == "apps":
            parts.pop()
    return ".".join(parts)


def _module_exists(dotted):
    """Return whether module `dotted` exists, without importing it or its packages.

    `importlib.util.find_spec("app.tasks")` would import `app` first, and with it whatever
    its __init__ imports (often Django); here each level is looked up in its parent's path.
    """
    locations = None
    parts = dotted.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        module = sys.modules.get(name)
        if module is not None:
            locations = getattr(module, "__path__", None)
            continue
        if depth == 1:
            spec = importlib.util.find_spec(name)
        elif locations is not None:
            spec = importlib.machinery.PathFinder.find_spec(name, list(locations))
        else:
            spec = None   # the parent is a plain module: it has no submodules
        if spec is None:
            return False
        locations = spec.submodule_search_locations
    return True


def _describe(exc):
    """Return "Type: message" on one line, for a ConfigurationError's reason."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
