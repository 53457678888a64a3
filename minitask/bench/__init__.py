"""`python -m minitask bench`: the command. The workloads live in `minitask.bench.run`.

This module only declares the command, so that every `python -m minitask` process (workers
included) can build its parser without importing the bench, or registering its tasks.
"""

import argparse

from ..argtypes import positive_int, positive_seconds

__all__ = ["add_command", "selected_workloads", "run_bench", "WORKLOAD_NAMES",
           "DEFAULT_WORKLOADS", "DEFAULT_TASKS", "DEFAULT_DURATION"]

# In the order they run: floor first, the others' ratios need it.
WORKLOAD_NAMES = ("floor", "drain", "rtt", "chord", "broker", "memory", "scaling", "chaos")
DEFAULT_WORKLOADS = ("floor", "drain", "rtt", "chord", "broker")
DEFAULT_TASKS = 10000
DEFAULT_DURATION = 60.0     # seconds of chaos: ~12 kills, under 2 minutes in all


def _workload(text):
    if text not in WORKLOAD_NAMES:
        raise argparse.ArgumentTypeError("unknown workload %r: choose from %s"
                                         % (text, ", ".join(WORKLOAD_NAMES)))
    return text


def add_command(commands):
    bench = commands.add_parser(
        "bench", help="measure throughput, latency and memory against this machine's floor",
        description="Measure minitask on this machine beside its TCP floor. No WORKLOAD: "
        "%s (under a minute on 2 cores). memory and scaling run 1M messages and take "
        "minutes." % " ".join(DEFAULT_WORKLOADS))
    bench.add_argument("workloads", nargs="*", type=_workload, metavar="WORKLOAD",
                       help="any of %s" % ", ".join(WORKLOAD_NAMES))
    bench.add_argument("--tasks", type=positive_int, default=DEFAULT_TASKS,
                       help="tasks for drain (default %d); rtt and broker scale with it"
                       % DEFAULT_TASKS)
    bench.add_argument("--concurrency", type=positive_int,
                       help="pool processes of the worker (default: CPU count)")
    bench.add_argument("--prefetch-multiplier", type=positive_int, metavar="N",
                       help="the workers' --prefetch-multiplier (default: the worker's, 4); "
                       "more suits many short tasks")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--broker", help="use this broker for drain, rtt and scaling instead "
                       "of starting one (workers are still the bench's own)")
    bench.add_argument("--chaos", action="store_true", help="also run chaos (alone when no "
                       "WORKLOAD is named): acks_late tasks under load while the broker and "
                       "workers are killed with kill -9 and restarted; counts what was lost")
    bench.add_argument("--duration", type=positive_seconds, default=DEFAULT_DURATION,
                       metavar="S", help="seconds of chaos before the drain (default %g)"
                       % DEFAULT_DURATION)
    bench.set_defaults(run=run_bench)


def selected_workloads(args):
    """The workloads to run, in `WORKLOAD_NAMES` order.

    ``--chaos`` adds chaos; alone (no WORKLOAD named) it runs only chaos.
    """
    chosen = set(args.workloads or ())
    if getattr(args, "chaos", False):
        chosen.add("chaos")
    return [name for name in WORKLOAD_NAMES if name in (chosen or DEFAULT_WORKLOADS)]


def run_bench(args):
    """Run the chosen workloads; raises MinitaskError (exit code 1) if any task was lost."""
    from .run import run  # the workloads, loaded only when a bench runs (not for --help)
    return run(args, selected_workloads(args))
