"""Drop the foreign keys' own indexes that a composite index leading with the same
column covers (every fill inserts into these tables). Only the indexes go: the foreign
keys stay as they are. Django's AlterField(db_index=False) would drop every index on
the bare column, the partial unique ``orders_ledger_one_signup_bonus`` too, and re-add
the foreign keys, so the database side is these DROP INDEX statements."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0005_user_event_log"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="notification",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="notifications",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "notifications_notification_user_id_b5e8c0ff"',
                    'CREATE INDEX IF NOT EXISTS "notifications_notification_user_id_b5e8c0ff" ON "notifications_notification" ("user_id")',
                ),
            ],
        ),
    ]
