from datetime import timedelta

from django.conf import settings
from django.db import migrations, models
from django.db.models import F


def open_sessions_deadline(apps, schema_editor):
    # last_seen_at lags activity by at most a minute: give open sessions that much more.
    Session = apps.get_model("accounts", "Session")
    Session.objects.filter(revoked_at__isnull=True).update(
        idle_expires_at=F("last_seen_at") + timedelta(seconds=settings.SESSION_IDLE_SECONDS + 60)
    )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_roles_groups")]

    operations = [
        migrations.AddField(
            model_name="session",
            name="idle_expires_at",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(open_sessions_deadline, migrations.RunPython.noop),
        migrations.RunSQL(
            "UPDATE accounts_session SET idle_expires_at = revoked_at "
            "WHERE idle_expires_at IS NULL",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="session", name="idle_expires_at", field=models.DateTimeField()
        ),
    ]
