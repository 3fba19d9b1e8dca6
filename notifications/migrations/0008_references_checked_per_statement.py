"""The notifications' references checked once per statement, as orders 0005 explains
(its functions): a fill inserts a notification, its outbox row and two event rows, four
references that the constraints checked one row at a time at commit. Django keeps the
relations (``db_constraint=False``); the outbox's column indexes stay."""

from django.conf import settings
from django.db import migrations, models

from cryptovault.dbreferences import reference_checked, reference_unconstrained


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0007_events_record_function"),
        # The trigger functions.
        ("orders", "0006_references_checked_per_statement"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                reference_unconstrained(
                    "notification", "user", to=settings.AUTH_USER_MODEL,
                    on_delete=models.CASCADE, related_name="notifications", db_index=False,
                ),
                reference_unconstrained(
                    "outboxemail", "notification", to="notifications.notification",
                    on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                ),
                reference_unconstrained(
                    "outboxemail", "user", to=settings.AUTH_USER_MODEL,
                    on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                ),
                reference_unconstrained(
                    "userevent", "user", to=settings.AUTH_USER_MODEL,
                    on_delete=models.CASCADE, related_name="+", db_index=False,
                ),
            ],  # fmt: skip
            database_operations=[
                reference_checked(
                    child="notifications_notification",
                    column="user_id",
                    parent="accounts_user",
                    name="notification_user_ref",
                    constraint="notifications_notification_user_id_b5e8c0ff_fk_accounts_user_id",
                ),
                reference_checked(
                    child="notifications_outboxemail",
                    column="notification_id",
                    parent="notifications_notification",
                    name="outbox_notification_ref",
                    constraint="notifications_outbox_notification_id_e370bb45_fk_notificat",
                ),
                reference_checked(
                    child="notifications_outboxemail",
                    column="user_id",
                    parent="accounts_user",
                    name="outbox_user_ref",
                    constraint="notifications_outboxemail_user_id_62030335_fk_accounts_user_id",
                ),
                reference_checked(
                    child="notifications_userevent",
                    column="user_id",
                    parent="accounts_user",
                    name="event_user_ref",
                    constraint="notifications_userevent_user_id_9cbc3051_fk_accounts_user_id",
                ),
            ],
        ),
    ]
