from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        # Registers the OpenAPI extension for our authentication class.
        from accounts import schema  # noqa: F401
        from accounts.roles import roles_on_post_migrate

        # Keeps the operator/admin groups' permissions complete as apps add models.
        post_migrate.connect(roles_on_post_migrate, dispatch_uid="accounts.roles_grant")
