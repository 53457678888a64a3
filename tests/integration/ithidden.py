"""A task only the worker imports: the client reaches it by name alone (`send_task`)."""

from minitask import task


@task(name="it.hidden")
def hidden(x):
    return "hidden:%s" % x
