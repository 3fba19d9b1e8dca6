from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which Django
        # loads only after every app's config module (the documented place is ready()).
        # Registers the OpenAPI extension for our authentication class.
        from accounts import schema  # noqa: F401
        from accounts.admin_sessions import admin_session_stamp
        from accounts.roles import roles_on_post_migrate

        # Keeps the operator/admin groups' permissions complete as apps add models.
        post_migrate.connect(roles_on_post_migrate, dispatch_uid="accounts.roles_grant")
        # Session bookkeeping, not business logic: every login starts the admin
        # session's absolute-limit clock, whichever view (or test client) logged in.
        user_logged_in.connect(admin_session_stamp, dispatch_uid="accounts.admin_session_stamp")
