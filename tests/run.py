#!/usr/bin/env python3
"""Run minitask's tests with nothing but Python installed:  python3 tests/run.py

- Runs in a virtual environment per Python version, in ~/.cache/minitask-tests (never in
  the project), made once and reused: it sees this Python's own pytest and hypothesis when
  it has them, else gets just those two installed.
- Installs Django there too (4.2 on Python 3.8 and 3.9, 5.x on newer ones), only for the
  tests of a real Django project; minitask itself never needs it. When it cannot (offline,
  say), it says why and those tests are skipped.
- Runs the whole suite (as two pytest processes at once, see SHARDS), then the fast unit
  and property tests, the seed guide's snippets and the Django project again under the
  oldest and newest CPython found in ~/.pyenv/versions (3.8 and 3.13), saying so when they
  are absent.
- In CI (CI=true), installs redis-server with apt-get when it is missing and it can (as
  root), so the Redis transport's suites run there; elsewhere they skip, saying why.
- Exits non-zero when any test fails, or when no test ran at all.

Options: --quick (only this Python), --long (the long hostile and chaos runs too);
anything else is passed to pytest (e.g. ``python3 tests/run.py -k journal``).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "minitask-tests")
PACKAGES = ["pytest", "hypothesis"]
FAST = ["tests/unit", "tests/property"]
# The whole suite runs as two pytest processes at once: most of its time is spent waiting
# on brokers, workers and redis-server that the tests start, so two halves take little more
# than the longer one. Each half is a set of folders, split so that they take about as long.
# Some suites of tests/integration (most Redis ones, and two guides' idioms: about a third of
# its time) run in the second half, which was otherwise done minutes before the first.
# (test_redis_signals.py stays: it imports test_signals, a name tests/unit has too.) Globs are
# expanded here, not by a shell.
MOVED = ["tests/integration/test_redis_[!s]*.py", "tests/integration/test_workeridioms.py",
         "tests/integration/test_periodicidioms.py", "tests/integration/test_optidioms.py",
         "tests/integration/test_redisidioms.py"]
SHARDS = [["tests/integration"] + ["--ignore-glob=" + os.path.join(ROOT, moved)
                                   for moved in MOVED],
          ["tests/chaos", "tests/hostile", "tests/packaging", "tests/contract"] + FAST + MOVED]
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


def redis_server_for_ci():
    """In CI (CI=true) on a Debian-like machine, as root: install redis-server when it is
    missing, so that the Redis transport runs the same suites as the built-in broker rather
    than skipping them. Anywhere else nothing is installed: those tests skip, saying why."""
    if not os.environ.get("CI") or shutil.which("redis-server"):
        return
    if not shutil.which("apt-get") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("tests/run.py: redis-server is missing and cannot be installed here (needs "
              "apt-get as root); the Redis tests are skipped", flush=True)
        return
    print("tests/run.py: installing redis-server with apt-get (the Redis transport's tests "
          "need it)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "redis-server"]):
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
        except subprocess.TimeoutExpired:
            print("tests/run.py: %s took over 10 minutes; the Redis tests are skipped"
                  % " ".join(command), flush=True)
            return
        if done.returncode != 0:
            lines = [line for line in done.stdout.splitlines() if line.strip()]
            print("tests/run.py: %s failed (%s); the Redis tests are skipped"
                  % (" ".join(command), lines[-1] if lines else done.returncode), flush=True)
            return


def start_pytest(python, paths, log, label, extra=()):
    """pytest on `paths`, started; its output goes to `log` (a file), or here when None."""
    if log is None:
        print("\n== %s: %s ==" % (label, " ".join(list(paths) + list(extra))), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                            + list(paths) + list(extra), cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT if log is not None else None)


def run_pytest(python, paths, extra, label):
    return failed(start_pytest(python, paths, None, label, extra).wait(), label)


def failed(code, what):
    """Whether a pytest exit `code` is a failure: a failed test, or none collected."""
    if code == NO_TESTS_COLLECTED:
        print("tests/run.py: %s collected no tests; that counts as a failure" % what)
    return code != 0


def expand(paths):
    """A shard's paths with its globs (relative to ROOT) turned into the files they name."""
    expanded = []
    for path in paths:
        if path.startswith("-") or not glob.has_magic(path):
            expanded.append(path)
        else:
            expanded += sorted(os.path.relpath(found, ROOT)
                               for found in glob.glob(os.path.join(ROOT, path)))
    return expanded


def run_shards(python, label):
    """The whole suite under `python`, as SHARDS run at once. The first shard prints as it
    goes (so a long run is never silent); the others print when they end. 1 if any failed."""
    sharded = tuple(path + os.sep for paths in SHARDS for path in paths
                    if not path.startswith("-") and not glob.has_magic(path))
    left_out = sorted({os.path.relpath(os.path.dirname(found), ROOT) for found in glob.glob(
        os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)
        if not os.path.relpath(found, ROOT).startswith(sharded)})
    if left_out:
        print("tests/run.py: no shard runs %s: add them to SHARDS" % ", ".join(left_out))
        return 1
    logs, runs = [], []
    try:
        for index, paths in enumerate(SHARDS):
            paths = expand(paths)
            if index == 0:
                runs.append(start_pytest(python, paths, None, label))
                continue
            log = tempfile.TemporaryFile(mode="w+")
            logs.append(log)
            runs.append(start_pytest(python, paths, log, label))
        codes = [run.wait() for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for log, paths in zip(logs, SHARDS[1:]):
        print("\n== %s: %s (ran beside the first) ==" % (label, " ".join(paths)), flush=True)
        log.seek(0)
        sys.stdout.write(log.read())
        log.close()
    outcomes = [failed(code, "%s %s" % (label, " ".join(paths)))
                for paths, code in zip(SHARDS, codes)]
    return 1 if any(outcomes) else 0


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
    redis_server_for_ci()
    try:
        python = test_python(sys.executable)
    except (OSError, subprocess.CalledProcessError) as exc:
        print("tests/run.py: cannot prepare Python %d.%d for tests: %s"
              % (sys.version_info[:2] + (exc,)))
        return 1
    label = "Python %d.%d" % sys.version_info[:2]
    if extra:
        failures += run_pytest(python, [] if any(not a.startswith("-") for a in extra)
                               else ["tests"], extra, label)
    else:
        failures += run_shards(python, label)
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
                os.path.dirname(os.path.dirname(other))))
    print("\ntests/run.py: %s" % ("all passed" if not failures else
                                  "%d run(s) failed" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
