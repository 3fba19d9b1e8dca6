from celery import shared_task

from notifications import events, outbox, services


@shared_task(name="notifications.emails_drain", acks_late=True, soft_time_limit=120, time_limit=150)
def notification_emails_drain() -> int:
    """Every due email of the outbox. Only a wake-up: the outbox rows are the queue, each
    failed send is retried by the outbox itself, and beat runs this every minute."""
    return outbox.outbox_emails_drain()


@shared_task(
    name="notifications.price_alerts_fire",
    acks_late=True,
    soft_time_limit=120,
    time_limit=150,
)
def price_alerts_fire(*_ignored_args, **_ignored_kwargs) -> int:
    """Notify the alerts a poll triggered (``price_alerts_evaluate``); idempotent. Takes
    no arguments: messages from before the poll triggered alerts itself carried prices
    (``{coin: price}``) and may still sit in the queue after a deploy, and a periodic
    task can be given any; both are accepted and ignored, so none can fire an alert."""
    return services.price_alerts_fire()


@shared_task(name="notifications.events_prune", acks_late=True, soft_time_limit=600, time_limit=660)
def user_events_prune() -> int:
    """The user event log past its retention (``notifications.events``), daily."""
    return events.events_prune()
