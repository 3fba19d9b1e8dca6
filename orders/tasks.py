"""The order queue. Tasks take ids (or plain values), call one service and are
idempotent: ``acks_late`` means a worker killed mid-task gets the message
redelivered, and the services only ever act on orders still in the right status."""

from celery import shared_task

from cryptovault.exceptions import TRANSIENT_ERRORS
from orders import services

_RETRY = {
    # An outage or a held-up run (Redis, PostgreSQL, the soft time limit) is never the
    # order's fault: the run rolls back and retries after 1, 2, 4 ... 30 s (jittered).
    # After the last retry the orders stay pending and orders.queue_sweep re-enqueues
    # them, so nothing is lost; the row locks make sure nothing fills twice.
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 10,
    "acks_late": True,
    # A run held up past the soft limit (a row lock, a slow dependency) is stopped,
    # rolled back and retried like an outage; the hard limit kills one that ignores it.
    "soft_time_limit": 60,
    "time_limit": 90,
}


@shared_task(name="orders.queue_process", **_RETRY)
def order_queue_process(user_id: int | None = None) -> int:
    """A run of the order queue for every user; messages from before one run served all
    users carry a user id, and work on that user's queue only."""
    return services.order_queue_process(user_id=user_id)


@shared_task(name="orders.limit_orders_match", **_RETRY)
def limit_orders_match(*_ignored_args, **_ignored_kwargs) -> int:
    """Match open limit orders against the price store. Takes no arguments: messages
    enqueued before prices were read from the store (``(prices, as_of)``) may still sit
    in the queue after a deploy, and a periodic task can be given any; both are accepted
    and ignored, so such a message neither fails nor sets a price."""
    return services.limit_orders_fill()


@shared_task(name="orders.limit_orders_match_part", **_RETRY)
def limit_orders_match_part(part: int, parts: int) -> int:
    """Match the open limit orders of the users whose id is ``part`` modulo ``parts``
    against the price store: each price tick enqueues every part, and the worker's
    processes fill them side by side."""
    return services.limit_orders_fill(part=part, parts=parts)


@shared_task(name="orders.queue_sweep", acks_late=True, soft_time_limit=60, time_limit=90)
def order_queue_sweep() -> int:
    return services.order_queue_sweep()
