"""The `sdist` command of minitask's build: setuptools' own, plus `tests/` and `examples/`.

The README tells people to run ``python3 tests/run.py`` and ``python3 examples/NN_*.py``, so
a source archive must carry both. setuptools puts only the packages (and a few standard
files) in an sdist unless a MANIFEST.in says more, and the project keeps no MANIFEST.in;
pyproject.toml names this class as the ``sdist`` command instead
(``[tool.setuptools.cmdclass]``). It is imported only by setuptools, at build time; the
wheel never holds it, since it holds only the ``minitask`` packages.
"""

import os

from setuptools.command.sdist import sdist

__all__ = ["SdistWithTestsAndExamples"]

FOLDERS = ("tests", "examples")
# Left behind by running the tests; never part of the source.
SKIPPED_FOLDERS = {"__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks"}


def folder_files(folder):
    """Every file under `folder` (relative to the project), sorted, minus test leftovers."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if name not in SKIPPED_FOLDERS)
        found += [os.path.join(root, name) for name in sorted(files)
                  if not name.endswith((".pyc", ".pyo"))]
    return found


class SdistWithTestsAndExamples(sdist):
    """setuptools' sdist, with every file of `FOLDERS` added to the archive."""

    def make_release_tree(self, base_dir, files):
        extra = [path for folder in FOLDERS for path in folder_files(folder)]
        super().make_release_tree(base_dir, list(dict.fromkeys(list(files) + extra)))
