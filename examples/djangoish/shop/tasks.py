"""The shop's tasks."""

from minitask import task


@task()
def charge_order(order_id, amount):
    return "order %s charged %.2f" % (order_id, amount)
