"""13. A custom loader: where a worker's configuration comes from, and what it imports.

The loader reads the configuration and imports the task modules; a worker asks it at start
(`on_worker_init`) and before each task (`on_task_init`). The default loader reads the
settings module and imports the IMPORTS setting. The LOADER setting names another one,
``"package.module.ClassName"``, a subclass of `minitask.loaders.BaseLoader`.

`JSONFileLoader` below reads its configuration from ``minitask.json`` in the worker's folder:
that file, not a command-line flag, tells this example's worker to import this module.
Its hooks leave a trace the tasks can report: `on_worker_init` runs once in the worker before
it takes any message, `on_task_init` in the pool process just before each task.

Run it:  python examples/13_custom_loader.py
"""
import _run  # noqa: F401  (first: it makes a checkout's minitask importable)

import json
import os

from minitask import task
from minitask.loaders import BaseLoader

TRACE = {"worker_init": False, "task_init": []}


class JSONFileLoader(BaseLoader):
    path = "minitask.json"

    def read_configuration(self):
        with open(self.path) as config:
            return json.load(config)

    def on_worker_init(self):
        TRACE["worker_init"] = True
        super().on_worker_init()            # imports IMPORTS

    def on_task_init(self, task_id, task):
        TRACE["task_init"].append(task.name)


@task()
def hello(name):
    return "hello, %s" % name


@task()
def loader_trace():
    from minitask import get_settings
    from minitask.loaders import current_loader
    return {"loader": type(current_loader()).__name__, "imports": get_settings().IMPORTS,
            "worker_init": TRACE["worker_init"], "task_init": TRACE["task_init"]}


def main(cluster):
    with open(os.path.join(cluster.scratch, JSONFileLoader.path), "w") as config:
        json.dump({"IMPORTS": [__name__]}, config)
    print("minitask.json says: %s" % json.dumps({"IMPORTS": [__name__]}))
    # No -I: the worker learns what to import from the loader alone.
    cluster.start_worker(["-c", "1"], modules="",
                         settings={"LOADER": __name__ + ".JSONFileLoader"})
    print("hello.delay('loader').get() = %r" % hello.delay("loader").get(timeout=10))
    trace = loader_trace.delay().get(timeout=10)
    print("the worker's loader: %s" % trace["loader"])
    print("its IMPORTS (from minitask.json): %s" % trace["imports"])
    print("on_worker_init ran before the worker took messages: %s" % trace["worker_init"])
    print("on_task_init ran before each task: %s" % ", ".join(
        name.rpartition(".")[2] for name in trace["task_init"]))


if __name__ == "__main__":
    _run.example(__file__, worker=False)
