"""Staff roles as Django groups: ``operator`` runs the platform from the admin, ``admin``
has every permission.

The groups are defined here, in code: the migration ``0003_roles_groups`` creates them,
and after every ``migrate`` (``post_migrate``) the permissions of each migrated app are
granted again, so models added later reach the groups without a new data migration.
Grants are only ever added, never removed.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions

OPERATOR_GROUP = "operator"
ADMIN_GROUP = "admin"
ROLE_GROUPS = {"operator": OPERATOR_GROUP, "admin": ADMIN_GROUP}

# Whoever may edit groups may hand out any permission, so that is the permission that
# guards privilege changes (roles, staff/superuser flags, groups, user permissions).
# Operators never have it.
ROLE_MANAGER_PERMISSION = "auth.change_group"

_ALL = ("view", "add", "change", "delete")

# What operators may do, per model. "change" on a model with a read-only admin form is
# what its actions need (cancel an order, credit a wallet, revoke a session).
OPERATOR_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "accounts.user": ("view", "change"),
    "accounts.session": ("view", "change"),
    "accounts.apikey": ("view", "change"),
    "accounts.auditevent": ("view",),
    "markets.coin": ("view", "add", "change"),
    "markets.pricepoint": ("view",),
    "markets.statussample": ("view",),
    "orders.balance": ("view", "change"),
    "orders.order": ("view", "change"),
    "orders.ledgerentry": ("view",),
    "notifications.notification": ("view", "change"),
    "notifications.pricealert": ("view", "change"),
    "notifications.notificationpreference": ("view", "change"),
    # Operators switch periodic tasks on and off (see cryptovault.admin.PeriodicTaskAdmin);
    # which task runs, with what arguments, where and when is for admins: arguments reach
    # code that moves money, and a schedule decides how often the market source is called.
    "django_celery_beat.periodictask": ("view", "change"),
    "django_celery_beat.intervalschedule": ("view",),
    "django_celery_beat.crontabschedule": ("view",),
    "django_celery_beat.solarschedule": ("view",),
    "django_celery_beat.clockedschedule": ("view",),
}


def roles_grant(*, app_label: str, apps=global_apps, using: str = "default") -> None:
    """Create the role groups if needed and grant them the permissions of ``app_label``."""
    permissions = list(
        apps.get_model("auth", "Permission")
        .objects.using(using)
        .filter(content_type__app_label=app_label)
        .values_list("pk", "codename")
    )
    if not permissions:  # an app without models: nothing to grant, no queries to spend
        return
    group_model = apps.get_model("auth", "Group")
    admin, _ = group_model.objects.using(using).get_or_create(name=ADMIN_GROUP)
    operator, _ = group_model.objects.using(using).get_or_create(name=OPERATOR_GROUP)
    admin.permissions.add(*(pk for pk, _ in permissions))
    operator_codenames = {
        f"{action}_{label.split('.', 1)[1]}"
        for label, actions in OPERATOR_PERMISSIONS.items()
        if label.split(".", 1)[0] == app_label
        for action in actions
    }
    operator.permissions.add(
        *(pk for pk, codename in permissions if codename in operator_codenames)
    )


def roles_grant_all(*, apps=global_apps, using: str = "default") -> None:
    """Every app's permissions to the groups, creating missing permissions first (inside
    a migration they do not exist yet: Django creates them after the last migration)."""
    for app_config in apps.get_app_configs():
        # Historical app configs have no models module; create_permissions skips those.
        app_config.models_module = getattr(app_config, "models_module", None) or True
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
        roles_grant(app_label=app_config.label, apps=apps, using=using)


def roles_on_post_migrate(sender, using="default", apps=global_apps, **kwargs) -> None:
    """``post_migrate`` receiver: runs after ``create_permissions`` for the same app
    (django.contrib.auth connects first), so the app's new permissions exist."""
    try:
        apps.get_model("auth", "Group")
    except LookupError:
        return
    roles_grant(app_label=sender.label, apps=apps, using=using)
