"""Account housekeeping, run by beat: sessions and codes. (Account emails go through the
outbox, notifications.outbox.)"""

from celery import shared_task

from accounts import services


@shared_task(name="accounts.prune", acks_late=True, soft_time_limit=600, time_limit=660)
def prune() -> dict[str, int]:
    return services.accounts_prune()
