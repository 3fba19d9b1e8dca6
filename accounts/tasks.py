"""Account housekeeping, run by beat: sessions, codes, and the user event log past its
retention (notifications.events). (Account emails go through the outbox,
notifications.outbox.)"""

from celery import shared_task

from accounts import services
from notifications.events import events_prune


@shared_task(name="accounts.prune", acks_late=True, soft_time_limit=600, time_limit=660)
def prune() -> dict[str, int]:
    return {**services.accounts_prune(), "user_events_deleted": events_prune()}
