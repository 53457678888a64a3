#!/usr/bin/env python3
"""Run minitask's tests with nothing but Python installed:  python3 tests/run.py

- Uses this Python's pytest and hypothesis when it has them; otherwise makes a virtual
  environment with just those two (in ~/.cache/minitask-tests, never in the project) and
  runs there.
- Runs the whole suite, then the fast unit and property tests again under the oldest and
  newest CPython found in ~/.pyenv/versions (3.8 and 3.13), saying so when they are absent.
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
NO_TESTS_COLLECTED = 5


def has_test_packages(python):
    probe = "import pytest, hypothesis"
    return subprocess.call([python, "-c", probe], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0


def test_python(python):
    """A Python that has pytest and hypothesis: `python` itself, or a venv made from it."""
    if has_test_packages(python):
        return python
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True).strip()
    home = os.path.join(CACHE, "py" + version)
    bindir = "Scripts" if os.name == "nt" else "bin"
    venv_python = os.path.join(home, bindir, "python")
    if not os.path.exists(venv_python) or not has_test_packages(venv_python):
        print("tests/run.py: installing %s for Python %s in %s"
              % (" and ".join(PACKAGES), version, home), flush=True)
        if python == sys.executable:
            venv.EnvBuilder(with_pip=True, clear=True).create(home)
        else:
            subprocess.check_call([python, "-m", "venv", "--clear", home])
        subprocess.check_call([venv_python, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check"] + PACKAGES)
    return venv_python


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
        os.environ["MINITASK_LONG_TESTS"] = "1"
    failures = 0
    python = test_python(sys.executable)
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
            failures += run_pytest(other_test, FAST, [], os.path.basename(
                os.path.dirname(os.path.dirname(other)))) != 0
    print("\ntests/run.py: %s" % ("all passed" if not failures else
                                  "%d run(s) failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
