from celery import shared_task

from notifications import services


@shared_task(
    name="notifications.notification_email_send",
    acks_late=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
    soft_time_limit=30,
    time_limit=60,
)
def notification_email_send(notification_id: int) -> bool:
    return services.notification_email_send(notification_id=notification_id)
