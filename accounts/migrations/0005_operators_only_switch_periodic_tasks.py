"""Operators no longer add, delete or redefine periodic tasks, nor edit schedules: they
switch tasks on and off (accounts.roles). Grants are otherwise only ever added, so the
ones operators held until now are taken back here."""

from django.db import migrations

REVOKED = [
    "add_periodictask",
    "delete_periodictask",
    *(
        f"{action}_{model}"
        for model in ("intervalschedule", "crontabschedule", "solarschedule", "clockedschedule")
        for action in ("add", "change", "delete")
    ),
]


def operators_revoke(apps, schema_editor):
    alias = schema_editor.connection.alias
    operator = apps.get_model("auth", "Group").objects.using(alias).filter(name="operator").first()
    if operator is None:
        return
    permissions = apps.get_model("auth", "Permission").objects.using(alias)
    operator.permissions.remove(
        *permissions.filter(content_type__app_label="django_celery_beat", codename__in=REVOKED)
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_session_idle_expires_at"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    # Not undone: re-granting would hand operators back the power this removes.
    operations = [migrations.RunPython(operators_revoke, migrations.RunPython.noop)]
