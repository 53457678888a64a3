"""minitask.loaders: which loader is chosen, what it imports, and how it fails.

The fake Django project, its apps and the custom loaders live in tests/unit/fixtures (all named
mtfix_*). Each test gets that folder on sys.path, a clean environment and fresh settings; its
mtfix_* modules are forgotten afterwards, so `mtfix_record.IMPORTED` lists only what that test
imported.
"""
import sys
import types

import pytest

from minitask import config, loaders
from minitask.exceptions import ConfigurationError
from minitask.loaders import BaseLoader, DefaultLoader, DjangoLoader, get_loader

from taskkit import isolated_settings  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.usefixtures("isolated_settings")


def imported():
    import mtfix_record
    return mtfix_record.IMPORTED


# -- choosing a loader -------------------------------------------------------------------------

def test_the_default_loader_is_chosen_without_django_or_loader():
    loader = get_loader()
    assert type(loader) is DefaultLoader
    assert loader.settings is config.get_settings()


def test_the_django_loader_is_chosen_when_django_settings_module_is_set(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_settings")
    assert type(get_loader()) is DjangoLoader
    settings = config.get_settings()
    assert settings.EMAIL_HOST == "django-mail.example.com"
    assert settings.source("EMAIL_HOST") == "module mtfix_django_settings"


@pytest.mark.parametrize("name, cls", [("default", DefaultLoader), ("Django", DjangoLoader),
                                       ("minitask.loaders.DjangoLoader", DjangoLoader)])
def test_loader_accepts_celerys_short_names_and_dotted_paths(name, cls):
    assert type(get_loader(config.configure(LOADER=name))) is cls


def test_loader_naming_a_custom_class_is_used_with_the_settings(monkeypatch):
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_settings")
    settings = config.configure(LOADER="mtfix_loaders.CustomLoader")
    loader = get_loader()
    assert type(loader).__name__ == "CustomLoader" and isinstance(loader, BaseLoader)
    assert loader.settings is settings


def test_a_custom_loaders_configuration_ranks_between_module_and_environment(monkeypatch):
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_settings")
    monkeypatch.setenv("MINITASK_LOADER", "mtfix_loaders.CustomLoader")
    monkeypatch.setenv("MINITASK_DEFAULT_ROUTING_KEY", "from-env")
    settings = config.get_settings()
    assert settings.DEFAULT_QUEUE == "from-loader"
    assert settings.source("DEFAULT_QUEUE") == "loader mtfix_loaders.CustomLoader"
    assert settings.CONCURRENCY == 7   # aliases work in a loader's configuration too
    assert settings.source("CONCURRENCY") == "loader mtfix_loaders.CustomLoader"
    # The loader hands the module's values back unchanged; they still come from the module.
    assert settings.source("EMAIL_PORT") == "module mtfix_settings"
    assert settings.source("DEFAULT_ROUTING_KEY") == "environment MINITASK_DEFAULT_ROUTING_KEY"
    assert settings.source("LOADER") == "environment MINITASK_LOADER"


def test_a_loader_that_does_not_override_read_configuration_leaves_sources_alone(monkeypatch):
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_settings")
    settings = config.configure(LOADER="mtfix_loaders.PlainLoader")
    assert settings.source("EMAIL_PORT") == "module mtfix_settings"


def test_loader_named_in_the_settings_module_is_used(monkeypatch, tmp_path):
    (tmp_path / "mtfix_loader_settings.py").write_text('LOADER = "mtfix_loaders.CustomLoader"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_loader_settings")
    assert config.get_settings().DEFAULT_QUEUE == "from-loader"
    assert type(loaders.current_loader()).__name__ == "CustomLoader"


@pytest.mark.parametrize("path, message", [
    ("mtfix_loaders.NotALoader", "LOADER='mtfix_loaders.NotALoader': expected a subclass of "
     "minitask.loaders.BaseLoader, got <class 'mtfix_loaders.NotALoader'>"),
    ("mtfix_loaders.not_a_class", "LOADER='mtfix_loaders.not_a_class': expected a subclass of "
                                  "minitask.loaders.BaseLoader, got 42"),
    ("mtfix_loaders.Missing", "LOADER='mtfix_loaders.Missing': 'mtfix_loaders' has no 'Missing'"),
    ("mtfix_nowhere.Loader", "LOADER='mtfix_nowhere.Loader': cannot import 'mtfix_nowhere': "
                             "ModuleNotFoundError: No module named 'mtfix_nowhere'"),
    ("mtfix_loaders.ListLoader", "LOADER='mtfix_loaders.ListLoader': read_configuration() "
                                 "returned list, expected a dict"),
])
def test_a_bad_loader_is_one_line_naming_it(path, message):
    with pytest.raises(ConfigurationError) as info:
        config.configure(LOADER=path)
    assert str(info.value) == message


def test_a_bad_loader_is_refused_by_loader_class_too():
    with pytest.raises(ConfigurationError, match="expected a subclass"):
        loaders.loader_class("mtfix_loaders.NotALoader")
    with pytest.raises(ConfigurationError, match="expected pkg.module.ClassName"):
        loaders.loader_class(".Loader")


def test_a_loader_that_asks_for_settings_while_they_load_is_told_so(monkeypatch):
    monkeypatch.setenv("MINITASK_LOADER", "mtfix_loaders.RecursiveLoader")
    with pytest.raises(ConfigurationError, match="while loading them"):
        config.get_settings()


def test_current_loader_is_cached_until_the_settings_change():
    first = loaders.current_loader()
    assert loaders.current_loader() is first
    config.configure(LOADER="mtfix_loaders.CustomLoader")
    assert type(loaders.current_loader()).__name__ == "CustomLoader"


# -- reading configuration -----------------------------------------------------------------------

def test_the_base_loader_reads_nothing():
    assert BaseLoader().read_configuration() == {}


def test_the_default_loader_reads_the_settings_module_as_config_finds_it(monkeypatch):
    assert DefaultLoader().read_configuration() == {}
    monkeypatch.setenv("MINITASK_CONFIG_MODULE", "mtfix_celery_settings")
    configuration = DefaultLoader().read_configuration()
    assert configuration["IMPORTS"] == ("mtfix_tasks_a",)       # aliases resolved, unchecked
    assert configuration["CONCURRENCY"] == 3
    assert "CELERY_IMPORTS" not in configuration


def test_the_django_loader_reads_the_django_settings_module(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_settings")
    configuration = DjangoLoader().read_configuration()
    assert configuration["EMAIL_HOST"] == "django-mail.example.com"
    assert "INSTALLED_APPS" not in configuration


# -- importing task modules ----------------------------------------------------------------------

def test_the_default_loader_imports_imports_in_order():
    loader = get_loader(config.configure(IMPORTS="mtfix_tasks_a,mtfix_app_with_tasks.tasks"))
    modules = loader.import_default_modules()
    assert [m.__name__ for m in modules] == ["mtfix_tasks_a", "mtfix_app_with_tasks.tasks"]
    assert imported() == ["mtfix_tasks_a", "mtfix_app_with_tasks.tasks"]


def test_on_worker_init_imports_the_task_modules_and_on_task_init_does_nothing():
    loader = get_loader(config.configure(IMPORTS=["mtfix_tasks_a"]))
    assert loader.on_worker_init() is None
    assert imported() == ["mtfix_tasks_a"]
    assert loader.on_task_init("id-1", object()) is None


def test_a_missing_task_module_is_one_line_naming_it():
    loader = get_loader(config.configure(IMPORTS=["mtfix_tasks_a", "mtfix_missing_tasks"]))
    with pytest.raises(ConfigurationError) as info:
        loader.import_default_modules()
    assert str(info.value) == ("cannot import 'mtfix_missing_tasks': ModuleNotFoundError: "
                               "No module named 'mtfix_missing_tasks'")


def test_the_django_loader_imports_the_tasks_of_apps_that_have_them(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_settings")
    loader = loaders.current_loader()
    assert loader.task_module_names() == ["mtfix_app_with_tasks.tasks",
                                          "mtfix_app_configured.tasks"]
    modules = loader.import_default_modules()
    assert [m.__name__ for m in modules] == [
        "mtfix_tasks_a", "mtfix_app_with_tasks.tasks", "mtfix_app_configured.tasks"]
    assert imported() == ["mtfix_tasks_a", "mtfix_app_with_tasks.tasks",
                          "mtfix_app_configured.tasks"]
    # An app without tasks is not even imported, nor is an AppConfig's module (it needs Django).
    assert "mtfix_app_without_tasks" not in sys.modules
    assert "mtfix_app_configured.apps" not in sys.modules


def test_the_django_loader_does_not_import_django(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_settings")
    before = {name for name in sys.modules if name == "django" or name.startswith("django.")}
    get_loader().import_default_modules()
    after = {name for name in sys.modules if name == "django" or name.startswith("django.")}
    assert after == before


def test_once_django_is_set_up_the_django_loader_takes_the_apps_from_its_registry(
        monkeypatch):
    # What django.setup() leaves behind: an app registry, ready, naming each app's package
    # (an AppConfig may name a package its INSTALLED_APPS entry does not spell out).
    configs = [types.SimpleNamespace(name=name) for name in (
        "django.contrib.auth", "mtfix_app_configured", "mtfix_app_with_tasks")]
    registry = types.SimpleNamespace(ready=True, get_app_configs=lambda: configs)
    monkeypatch.setitem(sys.modules, "django.apps", types.SimpleNamespace(apps=registry))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_settings")
    assert get_loader().task_module_names() == ["mtfix_app_configured.tasks",
                                                "mtfix_app_with_tasks.tasks"]


def test_every_loader_has_a_per_process_hook_that_does_nothing_by_default():
    assert get_loader(config.configure()).on_worker_process_init() is None


def test_a_django_app_whose_tasks_module_raises_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_failing_settings")
    with pytest.raises(ConfigurationError) as info:
        get_loader().import_default_modules()
    assert str(info.value) == ("cannot import 'mtfix_app_failing.tasks': "
                               "ValueError: tasks of mtfix_app_failing are broken")
    assert isinstance(info.value.__cause__, ValueError)


def test_a_django_app_that_is_not_installed_is_an_error(monkeypatch):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_django_missing_settings")
    with pytest.raises(ConfigurationError) as info:
        get_loader().import_default_modules()
    assert str(info.value) == ("INSTALLED_APPS entry 'mtfix_app_missing': "
                               "no module named 'mtfix_app_missing'")


def test_the_django_loader_needs_django_settings_module():
    loader = get_loader(config.configure(LOADER="django"))
    with pytest.raises(ConfigurationError, match="DJANGO_SETTINGS_MODULE is not set"):
        loader.import_default_modules()


def test_malformed_installed_apps_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "mtfix_bad_apps.py").write_text('INSTALLED_APPS = "mtfix_app_with_tasks"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mtfix_bad_apps")
    with pytest.raises(ConfigurationError, match="INSTALLED_APPS in 'mtfix_bad_apps'"):
        get_loader().import_default_modules()


def test_a_custom_loader_imports_the_imports_its_configuration_adds(monkeypatch):
    monkeypatch.setenv("MINITASK_LOADER", "mtfix_loaders.CustomLoader")
    loader = loaders.current_loader()
    loader.on_worker_init()
    loader.on_task_init("id-1", "mtfix.add")
    assert imported() == ["mtfix_tasks_a", ("on_task_init", "id-1", "mtfix.add")]


# -- Celery's -A --------------------------------------------------------------------------------

def test_app_modules_is_the_module_and_the_tasks_module_of_a_package(tmp_path, monkeypatch):
    package = tmp_path / "mtfix_proj"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('looked for, never imported')\n")
    (package / "tasks.py").write_text("")
    (tmp_path / "mtfix_plain.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert loaders.app_modules("mtfix_proj") == ["mtfix_proj", "mtfix_proj.tasks"]
    assert loaders.app_modules("mtfix_proj:app") == ["mtfix_proj", "mtfix_proj.tasks"]
    assert loaders.app_modules("mtfix_plain:celery") == ["mtfix_plain"]
    assert loaders.app_modules("mtfix_missing") == ["mtfix_missing"]     # its import will say
    assert "mtfix_proj" not in sys.modules


@pytest.mark.parametrize("spec", ["", ":app", "proj-x", "proj..tasks", "proj tasks"])
def test_app_modules_refuses_what_is_not_a_module_name(spec):
    with pytest.raises(ConfigurationError, match="expected a module name"):
        loaders.app_modules(spec)
