"""The wheel and the source archive: built without deprecation warnings, installed, working.

Builds both with `python -m build` under the oldest and newest CPython the project supports
(3.8, whose last setuptools is 75; and 3.13, with today's setuptools), so the metadata must
be a form both read without a warning. Then installs the wheel and the sdist into fresh
virtual environments of each and runs `minitask --help`, `minitask demo` and
`minitask bench --help` from the install, away from the checkout.

Needs PyPI for `build` and setuptools: offline, it is skipped with the reason printed. About
a minute on 2 cores; the tools' environments are kept in ~/.cache/minitask-tests.
"""

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "minitask-tests")
PYTHONS = ("3.8", "3.13")
LEFTOVERS = ("__pycache__", ".git", ".hypothesis", ".pytest_cache", ".benchmarks", "build",
             "dist", "*.egg-info", ".venv", "*.pyc")

pytestmark = pytest.mark.slow


def skip(reason):
    print("skipped: %s" % reason)
    pytest.skip(reason)


def python_of(version):
    matches = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/%s.*/bin/python"
                                                  % version)))
    return matches[-1] if matches else None


def run(command, timeout=300, **kwargs):
    """Run `command`; returns its output (stdout and stderr together) or fails the test."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "MINITASK_CONFIG_MODULE")}
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=env, **kwargs)
    assert done.returncode == 0, "%s exited %d:\n%s" % (" ".join(command), done.returncode,
                                                         done.stdout[-4000:])
    return done.stdout


def pip_install(python, *args):
    """pip install into `python`'s environment; skips the test when PyPI cannot be reached."""
    done = subprocess.run([python, "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    if done.returncode != 0:
        offline = ("Could not find a version", "No matching distribution",
                   "Failed to establish a new connection", "Temporary failure in name")
        if any(text in done.stdout for text in offline):
            skip("cannot reach PyPI for %s: %s" % (" ".join(args),
                                                   done.stdout.strip().splitlines()[-1]))
        raise AssertionError("pip install %s failed:\n%s" % (" ".join(args), done.stdout))


def venv(python, path):
    run([python, "-m", "venv", "--clear", path])
    return os.path.join(path, "bin", "python")


def build_tools(version, python):
    """A cached environment of `python` with `build` in it."""
    home = os.path.join(CACHE, "build-py" + version)
    tool = os.path.join(home, "bin", "python")
    ready = os.path.exists(tool) and subprocess.call(
        [tool, "-c", "import build"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    if not ready:
        venv(python, home)
        pip_install(tool, "build")
    return tool


@pytest.fixture(scope="module")
def pythons():
    found = {version: python_of(version) for version in PYTHONS}
    missing = [version for version, python in found.items() if python is None]
    if missing:
        skip("no ~/.pyenv/versions/%s to build and install with" % " or ".join(missing))
    return found


@pytest.fixture(scope="module")
def built(pythons, tmp_path_factory):
    """``{version: (wheel, sdist, build output)}``, each built by that Python's build tools
    from a clean copy of the checkout."""
    source = str(tmp_path_factory.mktemp("source") / "minitask")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFTOVERS))
    out = {}
    for version, python in pythons.items():
        dist = str(tmp_path_factory.mktemp("dist-py" + version))
        log = run([build_tools(version, python), "-m", "build", "--outdir", dist, source])
        [wheel] = glob.glob(os.path.join(dist, "*.whl"))
        [sdist] = glob.glob(os.path.join(dist, "*.tar.gz"))
        out[version] = wheel, sdist, log
    return out


@pytest.mark.parametrize("version", PYTHONS)
def test_the_build_gives_no_deprecation_warning(built, version):
    _wheel, _sdist, log = built[version]
    warned = [line for line in log.splitlines() if "deprecat" in line.lower()]
    assert not warned, "\n".join(warned)


@pytest.mark.parametrize("version", PYTHONS)
def test_the_sdist_carries_tests_examples_and_the_licence(built, version):
    _wheel, sdist, _log = built[version]
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for path in ("LICENSE", "README.md", "pyproject.toml", "tests/run.py",
                 "tests/conftest.py", "tests/unit/test_protocol.py",
                 "tests/packaging/sdist_command.py", "examples/01_task_class_and_decorator.py",
                 "examples/status-page.png", "minitask/broker/server.py",
                 "minitask/worker/worker.py"):
        assert path in names, path
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


@pytest.mark.parametrize("version", PYTHONS)
def test_the_wheel_holds_every_subpackage_and_nothing_else(built, version):
    wheel, _sdist, _log = built[version]
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    packages = {os.path.dirname(name) for name in names if name.endswith("/__init__.py")}
    on_disk = {os.path.relpath(os.path.dirname(path), ROOT) for path in
               glob.glob(os.path.join(ROOT, "minitask", "**", "__init__.py"), recursive=True)}
    assert packages == on_disk and "minitask/broker" in packages
    assert {name.split("/")[0] for name in names} == {"minitask", "minitask-0.1.0.dist-info"}
    assert "minitask-0.1.0.dist-info/licenses/LICENSE" in names or \
        "minitask-0.1.0.dist-info/LICENSE" in names


@pytest.mark.parametrize("version", PYTHONS)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_an_install_runs_help_demo_and_bench_help(pythons, built, version, kind, tmp_path):
    # Each Python installs what the other one built: both toolchains' output must serve both.
    other = PYTHONS[1 - PYTHONS.index(version)]
    wheel, sdist, _log = built[other]
    python = venv(pythons[version], str(tmp_path / "venv"))
    pip_install(python, wheel if kind == "wheel" else sdist)
    command = os.path.join(str(tmp_path / "venv"), "bin", "minitask")
    elsewhere = str(tmp_path)                   # not the checkout: the install must do
    assert "usage: minitask" in run([command, "--help"], cwd=elsewhere)
    assert "usage: minitask bench" in run([command, "bench", "--help"], cwd=elsewhere)
    demo = run([command, "demo"], cwd=elsewhere, timeout=120)
    assert "-> 4   [SUCCESS" in demo and "all tasks done" in demo
    assert "Traceback" not in demo
    where = run([python, "-c", "import minitask, sys; sys.stdout.write(minitask.__file__)"],
                cwd=elsewhere)
    assert where.startswith(str(tmp_path / "venv"))
