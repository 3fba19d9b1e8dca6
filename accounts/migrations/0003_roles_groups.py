"""The staff role groups ``operator`` and ``admin`` with their permissions
(defined in accounts.roles; later migrations of any app reach them via post_migrate)."""

from django.db import migrations


def groups_create(apps, schema_editor):
    from accounts.roles import roles_grant_all

    roles_grant_all(apps=apps, using=schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_sessions_verification_audit"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("markets", "0002_pricepoint"),
        ("orders", "0001_initial"),
        ("notifications", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    # Nothing to undo: the post_migrate grants (accounts.roles) would recreate the groups
    # after any migrate anyway.
    operations = [migrations.RunPython(groups_create, migrations.RunPython.noop)]
