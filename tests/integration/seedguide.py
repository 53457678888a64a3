"""The code snippets of the seed guide (early Celery's "Tasks" page), taken from its own text.

The guide is stored as one line of reST: its code blocks have lost their line breaks and
indentation. `snippets()` finds each ``.. code-block:: python`` in that text and takes the
code that follows, word for word; `LAYOUTS` only says where its lines break and how far each
is indented, as the original page showed it. A layout whose words differ from the guide's
is refused, so what runs is the guide's code, re-lined, with only these changes
(`MODERNISE`): the imports name minitask instead of celery, the stand-ins below instead of
Django's `User`, and Python 2's ``except X, exc:`` is written ``except X as exc:``.

The guide leans on things it does not define; small stand-ins live here, and each snippet
module imports what it needs from this one (`PRELUDES`):

- ``create_user(username, password)``, the guide's plain function, and Django's ``User``
  (``User.objects.create(...)``): both add a line to a trace file;
- ``Twitter``: ``Twitter(oauth).update_status(tweet)`` fails ``oauth["failures"]`` times in
  a row with ``Twitter.FailWhaleError``, counting attempts in a trace file, then succeeds.

Trace files live in ``ITTASKS_DIR`` (the test's folder, which its workers share), so a test
can count what ran across processes.
"""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SEED_NAME = "000_47a9c2dcb13cec53.txt"
# The seed lives in shared/ beside the repository (or beside the folder of worktrees); a
# checkout without it uses the copy kept with the tests, which a test keeps identical.
SEED_PLACES = [os.path.join(ROOT, os.pardir, "shared", "seed", SEED_NAME),
               os.path.join(ROOT, os.pardir, os.pardir, "shared", "seed", SEED_NAME)]
FIXTURE = os.path.join(HERE, "fixtures", "celery-tasks-guide.txt")
CODE_BLOCK = ".. code-block:: python"


# -- the stand-ins -----------------------------------------------------------------------------

def trace(name, line):
    path = os.path.join(os.environ.get("ITTASKS_DIR", "/tmp"), "seed-%s.log" % name)
    with open(path, "a") as handle:
        handle.write("%s\n" % (line,))


def read_trace(directory, name):
    path = os.path.join(str(directory), "seed-%s.log" % name)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.rstrip("\n") for line in handle]


def create_user(username, password):
    """The guide's "function ``create_user``, that takes two arguments"."""
    trace("users", "create_user(%r, %r)" % (username, password))


class _Manager:
    def create(self, username, password):
        trace("users", "User.objects.create(username=%r, password=%r)" % (username, password))


class User:
    """Stands in for Django's ``User`` model."""

    objects = _Manager()


class Twitter:
    """Stands in for a Twitter client whose service is down for ``oauth["failures"]`` posts."""

    class FailWhaleError(Exception):
        pass

    class LoginError(Exception):
        pass

    def __init__(self, oauth):
        self.oauth = oauth

    def update_status(self, tweet):
        directory = os.environ.get("ITTASKS_DIR", "/tmp")
        attempt = len(read_trace(directory, "tweet-" + tweet)) + 1
        trace("tweet-" + tweet, "attempt %d" % attempt)
        if attempt <= self.oauth["failures"]:
            raise Twitter.FailWhaleError("Twitter is over capacity (attempt %d)" % attempt)
        return "posted"


# -- the snippets ------------------------------------------------------------------------------

# Each code block of the guide, in order: a module name for it, and its code as the original
# page laid it out (the guide's own words; the line breaks and indentation are all that is
# added). A doctest block is laid out up to its last ">>>" line; the rest is its output.
LAYOUTS = [
    ("seed_01_task_class", """\
from celery.task import Task

class CreateUserTask(Task):
    def run(self, username, password):
        create_user(username, password)
"""),
    ("seed_02_task_decorator", """\
from celery.decorators import task
from django.contrib.auth import User

@task()
def create_user(username, password):
    User.objects.create(username=username, password=password)
"""),
    ("seed_03_decorator_options", """\
@task(serializer="json")
def create_user(username, password):
    User.objects.create(username=username, password=password)
"""),
    ("seed_04_task_of_a_function", """\
create_user_task = task()(create_user)
create_user_task.__name__ = "create_user_task"
"""),
    ("seed_05_logging_class", """\
class AddTask(Task):

    def run(self, x, y, **kwargs):
        logger = self.get_logger(**kwargs)
        logger.info("Adding %s + %s" % (x, y))
        return x + y
"""),
    ("seed_06_logging_decorator", """\
@task()
def add(x, y, **kwargs):
    logger = add.get_logger(**kwargs)
    logger.info("Adding %s + %s" % (x, y))
    return x + y
"""),
    ("seed_07_retry", """\
@task()
def send_twitter_status(oauth, tweet, **kwargs):
    try:
        twitter = Twitter(oauth)
        twitter.update_status(tweet)
    except (Twitter.FailWhaleError, Twitter.LoginError), exc:
        send_twitter_status.retry(args=[oauth, tweet], exc=exc, **kwargs)
"""),
    ("seed_08_retry_countdown", """\
class MyTask(Task):
    default_retry_delay = 30 * 60 # retry in 30 minutes

    def run(self, x, y, **kwargs):
        try:
            ...
        except Exception, exc:
            self.retry([x, y], exc=exc,
                       countdown=60 # override the default and
                                    # retry in 1 minute
                       **kwargs)
"""),
    ("seed_09_registry", """\
>>> from celery.task import registry
>>> from celery import task
>>> registry.tasks
"""),
    ("seed_10_abstract", """\
class MyTask(Task):
    abstract = True
"""),
]

# The only changes made to the guide's code, each (pattern, replacement): imports, and
# Python 2's "except X, exc:". Each must change something in the snippets that use it.
MODERNISE = [
    (r"^from celery\.task import Task$", "from minitask.task import Task"),
    (r"^from celery\.decorators import task$", "from minitask.decorators import task"),
    (r"^from django\.contrib\.auth import User$", "from seedguide import User"),
    (r"^>>> from celery\.task import registry$", ">>> from minitask.task import registry"),
    (r"^>>> from celery import task$", ">>> from minitask import task"),
    (r"^(\s*)except (.+), (\w+):$", r"\1except \2 as \3:"),
]

# What a snippet takes from the guide's text around it: names an earlier snippet defined
# or imported, and the stand-ins. Added above the snippet, never inside it.
PRELUDES = {
    "seed_01_task_class": "from seedguide import create_user\n",
    "seed_03_decorator_options": "from minitask.decorators import task\n"
                                 "from seedguide import User\n",
    "seed_04_task_of_a_function": "from minitask.decorators import task\n"
                                  "from seedguide import create_user\n",
    "seed_05_logging_class": "from minitask.task import Task\n",
    "seed_06_logging_decorator": "from minitask.decorators import task\n",
    "seed_07_retry": "from minitask.decorators import task\n"
                     "from seedguide import Twitter\n",
    "seed_08_retry_countdown": "from minitask.task import Task\n",
    "seed_10_abstract": "from minitask.task import Task\n",
}


class Snippet:
    """One code block: the guide's words (`original`, re-lined) and the code that runs."""

    def __init__(self, module, original, code):
        self.module = module
        self.original = original
        self.code = code

    @property
    def is_doctest(self):
        return self.code.startswith(">>> ")

    def statements(self):
        """A doctest block's statements, without their ">>> " prompts."""
        return [line[4:] for line in self.code.splitlines() if line.startswith(">>> ")]

    def module_source(self):
        """The module a worker imports: the prelude, then the snippet exactly."""
        return "%s\n# -- the guide's code --\n%s" % (PRELUDES.get(self.module, ""), self.code)


def seed_path():
    """The seed guide's path: shared/'s copy when there is one, else the tests' fixture."""
    for path in SEED_PLACES:
        if os.path.isfile(path):
            return os.path.normpath(path)
    return FIXTURE


def read_seed(path=None):
    with open(path or seed_path(), encoding="utf-8") as handle:
        return handle.read()


def snippets(text=None):
    """Every code block of the guide, in order, as Snippets."""
    text = read_seed() if text is None else text
    blocks = text.split(CODE_BLOCK)[1:]
    if len(blocks) != len(LAYOUTS):
        raise ValueError("the guide has %d code blocks, and there are %d layouts"
                         % (len(blocks), len(LAYOUTS)))
    found = []
    for (module, layout), block in zip(LAYOUTS, blocks):
        original = relayout(block.split(), layout, module)
        found.append(Snippet(module, original, modernise(original)))
    for pattern, _ in MODERNISE:
        if not any(re.search(pattern, s.original, re.M) for s in found):
            raise ValueError("the change %r applies to no snippet" % pattern)
    return found


def relayout(words, layout, module):
    """The guide's `words`, broken into the layout's lines with the layout's indentation."""
    lines = []
    position = 0
    for line in layout.splitlines():
        wanted = line.split()
        taken = words[position:position + len(wanted)]
        if taken != wanted:
            raise ValueError("layout of %s differs from the guide at word %d: %r, the guide "
                             "has %r" % (module, position, " ".join(wanted), " ".join(taken)))
        position += len(wanted)
        indent = line[:len(line) - len(line.lstrip())]
        lines.append(indent + " ".join(taken) if taken else "")
    return "\n".join(lines) + "\n"


def modernise(code):
    for pattern, replacement in MODERNISE:
        code = re.sub(pattern, replacement, code, flags=re.M)
    return code


def write_modules(directory):
    """Write each snippet (but the doctest) as a module in `directory`; returns them all."""
    found = snippets()
    for snippet in found:
        if not snippet.is_doctest:
            with open(os.path.join(str(directory), snippet.module + ".py"), "w") as handle:
                handle.write(snippet.module_source())
    return found
