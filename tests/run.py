#!/usr/bin/env python3
"""Run minitask's tests with nothing but Python installed:  python3 tests/run.py

- Runs in a virtual environment per Python version, in ~/.cache/minitask-tests (never in
  the project), made once and reused: it sees this Python's own pytest and hypothesis when
  it has them, else gets just those two installed.
- Installs Django there too (4.2 on Python 3.8 and 3.9, 5.x on newer ones), only for the
  tests of a real Django project; minitask itself never needs it. When it cannot (offline,
  say), it says why and those tests are skipped.
- Runs the whole suite, then the fast unit and property tests, the seed guide's snippets
  and the Django project again under the oldest and newest CPython found in
  ~/.pyenv/versions (3.8 and 3.13), saying so when they are absent.
- Exits non-zero when any test fails, or when no test ran at all.

Options: --quick (only this Python), --long (the long hostile and chaos runs too);
anything else is passed to pytest (e.g. ``python3 tests/run.py -k journal``).
"""

import glob
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "minitask-tests")
PACKAGES = ["pytest", "hypothesis"]
FAST = ["tests/unit", "tests/property"]
# Run again under the other Pythons too: real code nobody here wrote, on a real worker.
FOREIGN = ["tests/integration/test_seed_guide.py", "tests/integration/test_django.py"]
NO_TESTS_COLLECTED = 5


def has_modules(python, modules):
    probe = "import " + ", ".join(modules)
    return subprocess.call([python, "-c", probe], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def django_requirement(version):
    """The Django release line the tests use on Python `version` ("3.8")."""
    major, minor = (int(part) for part in version.split("."))
    return "django>=4.2,<4.3" if (major, minor) < (3, 10) else "django>=5.0,<6"


def test_python(python):
    """The venv the tests run in for `python`: pytest, hypothesis and, if it can, Django."""
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True).strip()
    home = os.path.join(CACHE, "py" + version)
    bindir = "Scripts" if os.name == "nt" else "bin"
    venv_python = os.path.join(home, bindir, "python")
    if not os.path.exists(venv_python) or not has_modules(venv_python, PACKAGES):
        own = has_modules(python, PACKAGES)     # then the venv sees them: nothing to fetch
        print("tests/run.py: making a virtual environment for Python %s in %s%s"
              % (version, home, "" if own else " with " + " and ".join(PACKAGES)), flush=True)
        if python == sys.executable:
            venv.EnvBuilder(with_pip=True, clear=True, system_site_packages=own).create(home)
        else:
            subprocess.check_call([python, "-m", "venv", "--clear", home]
                                  + (["--system-site-packages"] if own else []))
        if not own:
            pip_install(venv_python, PACKAGES, check=True)
    if not has_modules(venv_python, ["django"]):
        requirement = django_requirement(version)
        print("tests/run.py: installing %s for Python %s (the Django tests need it)"
              % (requirement, version), flush=True)
        why = pip_install(venv_python, [requirement])
        if why:
            print("tests/run.py: could not install %s for Python %s (%s); the tests of a real "
                  "Django project are skipped" % (requirement, version, why), flush=True)
    return venv_python


def pip_install(python, requirements, check=False):
    """pip install `requirements`; returns None, or why it failed in one line."""
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--retries", "1",
                           "--timeout", "20", "--disable-pip-version-check"] + requirements,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    why = lines[-1] if lines else "pip exited with %d" % done.returncode
    if check:
        raise OSError("pip install %s failed: %s" % (" ".join(requirements), why))
    return why


def run_pytest(python, paths, extra, label):
    print("\n== %s: %s ==" % (label, " ".join(paths + extra)), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    code = subprocess.call([python, "-m", "pytest", "-q"] + paths + extra, cwd=ROOT, env=env)
    if code == NO_TESTS_COLLECTED:
        print("tests/run.py: %s collected no tests; that counts as a failure" % label)
        return 1
    return code


def other_pythons():
    """The oldest and newest CPython under ~/.pyenv/versions (3.8 and 3.13 are supported)."""
    found = []
    for pattern in ("3.8*", "3.13*"):
        matches = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/" + pattern)))
        matches = [m for m in matches if os.path.exists(os.path.join(m, "bin", "python"))]
        if matches:
            found.append(os.path.join(matches[-1], "bin", "python"))
        else:
            print("tests/run.py: no ~/.pyenv/versions/%s found; skipping the fast tests "
                  "under that Python" % pattern)
    return found


def main(argv):
    quick = "--quick" in argv
    extra = [arg for arg in argv if arg not in ("--quick", "--long")]
    if "--long" in argv:
        os.environ["LONG_MINITASK_TESTS"] = "1"
    failures = 0
    try:
        python = test_python(sys.executable)
    except (OSError, subprocess.CalledProcessError) as exc:
        print("tests/run.py: cannot prepare Python %d.%d for tests: %s"
              % (sys.version_info[:2] + (exc,)))
        return 1
    failures += run_pytest(python, [] if any(not a.startswith("-") for a in extra)
                           else ["tests"], extra, "Python %d.%d" % sys.version_info[:2]) != 0
    if not quick and not extra:
        for other in other_pythons():
            if os.path.realpath(other) == os.path.realpath(sys.executable):
                continue
            try:
                other_test = test_python(other)
            except (OSError, subprocess.CalledProcessError) as exc:
                print("tests/run.py: cannot prepare %s for tests: %s" % (other, exc))
                failures += 1
                continue
            failures += run_pytest(other_test, FAST + FOREIGN, [], os.path.basename(
                os.path.dirname(os.path.dirname(other)))) != 0
    print("\ntests/run.py: %s" % ("all passed" if not failures else
                                  "%d run(s) failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
