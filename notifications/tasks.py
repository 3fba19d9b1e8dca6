from decimal import Decimal

from celery import shared_task

from notifications import outbox, services


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
def price_alerts_fire(prices: dict[str, str]) -> int:
    """Prices travel as decimal strings (JSON); firing is idempotent (alerts deactivate)."""
    return services.price_alerts_fire(
        prices={coin: Decimal(price) for coin, price in prices.items()}
    )
