"""Operators' view of accounts: users (with their actions), sessions, the audit log.

Privileges are guarded here: a user's role, staff/superuser flags, groups and
permissions are only editable by role managers (``accounts.roles.ROLE_MANAGER_PERMISSION``,
the ``admin`` group and superusers); operators act on regular users only, and only through
the actions below, which call ``accounts.services`` (those audit who did what, when).
"""

from typing import ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.urls import reverse
from django.utils.html import format_html

from accounts import services
from accounts.apis import username_validator
from accounts.models import (
    ApiKey,
    AuditEvent,
    EmailVerification,
    PasswordResetToken,
    RecoveryCode,
    Revocable,
    Session,
    TwoFactor,
    User,
)
from accounts.roles import ROLE_MANAGER_PERMISSION
from cryptovault.admin import AuditedAdmin, LargeTablePaginator, ReadOnlyAdmin, admin_audit

admin.site.site_header = "CryptoVault operations"
admin.site.site_title = "CryptoVault admin"
admin.site.index_title = "Operations console"
admin.site.index_template = "admin/cryptovault_index.html"
admin.site.site_url = None  # no public site to "view": the platform is an API


class AdminLoginForm(AdminAuthenticationForm):
    """The console's login under the API login's rules (accounts.services.admin_login):
    failures count toward the account's lockout, a locked account is refused even with
    the right password, staff with 2FA on also give a code, every attempt is audited."""

    otp = forms.CharField(
        label="Two-factor code",
        required=False,
        max_length=32,
        help_text="Only if two-factor login is on: a code from your app or a recovery code.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        # Unknown identifiers lock the same way, so this says nothing about who exists.
        "account_locked": (
            "Too many failed logins for this account. Try again in %(minutes)s minute(s)."
        ),
        "otp": "Enter a valid two-factor code (this account has two-factor login on).",
    }

    def clean(self):
        identifier = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if identifier is None or not password:
            return self.cleaned_data  # the field errors say what is missing
        try:
            self.user_cache = services.admin_login(
                identifier=identifier,
                password=password,
                otp=self.cleaned_data.get("otp") or "",
                request=self.request,
            )
        except services.AccountLocked as exc:
            minutes = -(-exc.retry_after // 60)
            raise forms.ValidationError(
                self.error_messages["account_locked"],
                code="account_locked",
                params={"minutes": minutes},
            ) from exc
        except services.AdminOtpRefused as exc:
            raise forms.ValidationError(self.error_messages["otp"], code="otp") from exc
        except services.AdminLoginRefused as exc:
            raise self.get_invalid_login_error() from exc
        return self.cleaned_data


admin.site.login_form = AdminLoginForm
# Django's login page with the two-factor field.
admin.site.login_template = "admin/cryptovault_login.html"

PRIVILEGE_FIELDS = ("role", "is_staff", "is_superuser", "groups", "user_permissions")
# Changed only through actions, which run the services' side effects (bonus, sessions).
SERVICE_FIELDS = ("email_verified_at", "is_active", "google_sub", "last_login", "date_joined")


def can_manage_roles(request) -> bool:
    return request.user.has_perm(ROLE_MANAGER_PERMISSION)


def is_privileged(user: User) -> bool:
    return user.is_staff or user.is_superuser or user.role != User.Role.USER


def email_clean(email: str, *, exclude_pk=None) -> str:
    """Emails are stored lower-cased and unique whatever the case, as at signup."""
    email = User.objects.normalize_email(email.strip()).lower()
    if User.objects.filter(email__iexact=email).exclude(pk=exclude_pk).exists():
        raise forms.ValidationError("A user with this email already exists.")
    return email


class UserChangeForm(auth_forms.UserChangeForm):
    """Django's user form with our username rules (as in the API): optional, 3-30 of
    ``[A-Za-z0-9_.-]``, unique whatever the case (the model constraint, form-checked)."""

    username = forms.CharField(required=False, max_length=30, validators=[username_validator])

    class Meta(auth_forms.UserChangeForm.Meta):
        model = User
        fields = "__all__"
        field_classes: ClassVar[dict] = {}

    def clean_email(self) -> str:
        return email_clean(self.cleaned_data["email"], exclude_pk=self.instance.pk)

    def clean_username(self) -> str | None:
        username = self.cleaned_data["username"] or None
        taken = User.objects.filter(username__iexact=username).exclude(pk=self.instance.pk)
        if username and taken.exists():
            raise forms.ValidationError("This username is taken.")
        return username


class UserCreationForm(auth_forms.AdminUserCreationForm):
    class Meta(auth_forms.AdminUserCreationForm.Meta):
        model = User
        fields = ("email",)
        field_classes: ClassVar[dict] = {}

    def clean_email(self) -> str:
        return email_clean(self.cleaned_data["email"])


@admin.register(User)
class UserAdmin(AuditedAdmin, DjangoUserAdmin):
    # By id, not date_joined: same order, and the primary key index serves it.
    ordering = ("-id",)
    list_display = (
        "email", "username", "name", "role", "is_active", "verified", "date_joined", "last_login",
    )  # fmt: skip
    list_filter = (
        "role",
        "is_active",
        ("email_verified_at", admin.EmptyFieldListFilter),
        "is_staff",
        "is_superuser",
        "date_joined",
    )
    search_fields = ("email", "username", "name", "=id")
    paginator = LargeTablePaginator
    form = UserChangeForm
    add_form = UserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("username", "name", "email_verified_at", "google_sub")}),
        ("Status", {"fields": ("is_active", "sessions")}),
        ("Privileges", {"fields": PRIVILEGE_FIELDS}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    actions = (
        "verify_email",
        "resend_verification",
        "lock",
        "unlock",
        "revoke_sessions",
        "set_role_user",
        "set_role_operator",
        "set_role_admin",
    )

    @admin.display(boolean=True, description="verified", ordering="email_verified_at")
    def verified(self, user: User) -> bool:
        return user.is_email_verified

    @admin.display(description="sessions")
    def sessions(self, user: User) -> str:
        url = reverse("admin:accounts_session_changelist") + f"?user__id__exact={user.pk}"
        return format_html('<a href="{}">Login sessions of this user</a>', url)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or can_manage_roles(request):
            return fieldsets
        # No password section: setting one is for admins (see user_change_password).
        return ((None, {"fields": ("email",)}), *fieldsets[1:])

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        fields: tuple[str, ...] = ("sessions", *SERVICE_FIELDS)
        if not can_manage_roles(request):
            # A new email would skip verification and open the account to a reset.
            fields += ("email", *PRIVILEGE_FIELDS)
        else:
            # A role is more than a flag: user_role_set keeps staff and groups in step.
            fields += ("role",)
        return fields

    def has_change_permission(self, request, obj=None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        # Operators look after regular users; staff and superusers are the admins' job.
        return obj is None or not is_privileged(obj) or can_manage_roles(request)

    def user_change_password(self, request, id, form_url=""):
        # Setting someone's password is taking over their account: admins only.
        if not can_manage_roles(request):
            raise PermissionDenied
        return super().user_change_password(request, id, form_url)

    # --- actions -------------------------------------------------------------------

    def _targets(self, request, queryset) -> list[User]:
        users = list(queryset)
        if can_manage_roles(request):
            return users
        allowed = [u for u in users if not is_privileged(u)]
        if len(allowed) < len(users):
            self.message_user(
                request,
                f"Skipped {len(users) - len(allowed)} staff account(s): only admins act on them.",
                messages.WARNING,
            )
        return allowed

    @admin.action(description="Mark email verified (credits the signup bonus once)")
    def verify_email(self, request, queryset):
        done = 0
        for user in self._targets(request, queryset):
            with transaction.atomic():
                if services.user_email_mark_verified(user=user, request=request):
                    admin_audit(request, action="email_verified_by_operator", target=user)
                    done += 1
        self.message_user(request, f"Verified {done} email(s).", messages.SUCCESS)

    @admin.action(description="Resend the verification email")
    def resend_verification(self, request, queryset):
        sent = 0
        for user in self._targets(request, queryset):
            if user.is_email_verified or not user.is_active:
                continue
            admin_audit(request, action="verification_resent_by_operator", target=user)
            # A fresh code and link, issued as it is sent (the old ones stop working).
            services.verification_email_request(user=user)
            sent += 1
        self.message_user(
            request, f"Verification email queued for {sent} unverified user(s).", messages.SUCCESS
        )

    @admin.action(description="Lock (log out everywhere, no more logins)")
    def lock(self, request, queryset):
        users = [u for u in self._targets(request, queryset) if u.pk != request.user.pk]
        for user in users:
            services.user_lock(user=user, actor=request.user, request=request)
        self.message_user(request, f"Locked {len(users)} user(s).", messages.SUCCESS)

    @admin.action(description="Unlock (also clears failed-login lockouts)")
    def unlock(self, request, queryset):
        users = self._targets(request, queryset)
        for user in users:
            services.user_unlock(user=user, actor=request.user, request=request)
        self.message_user(request, f"Unlocked {len(users)} user(s).", messages.SUCCESS)

    @admin.action(description="Revoke all login sessions")
    def revoke_sessions(self, request, queryset):
        ended = sum(
            services.user_sessions_revoke_all(
                user=user, reason="operator", actor=request.user, request=request
            )
            for user in self._targets(request, queryset)
        )
        self.message_user(request, f"Revoked {ended} session(s).", messages.SUCCESS)

    def _role_set(self, request, queryset, role: str) -> None:
        users = [u for u in queryset if u.pk != request.user.pk]
        for user in users:
            services.user_role_set(user=user, role=role, actor=request.user, request=request)
        skipped = " (not your own)" if len(users) < len(queryset) else ""
        self.message_user(
            request, f"Role {role} set on {len(users)} user(s){skipped}.", messages.SUCCESS
        )

    @admin.action(description="Set role: user", permissions=["manage_roles"])
    def set_role_user(self, request, queryset):
        self._role_set(request, queryset, User.Role.USER)

    @admin.action(description="Set role: operator", permissions=["manage_roles"])
    def set_role_operator(self, request, queryset):
        self._role_set(request, queryset, User.Role.OPERATOR)

    @admin.action(description="Set role: admin", permissions=["manage_roles"])
    def set_role_admin(self, request, queryset):
        self._role_set(request, queryset, User.Role.ADMIN)

    def has_manage_roles_permission(self, request) -> bool:
        return can_manage_roles(request)


class _RevocableAdmin(ReadOnlyAdmin):
    """Sessions and API keys: read-only, with a ``revoke`` action; a privileged user's
    are revoked only by a role manager. ``noun`` names one in the confirmation."""

    list_select_related = ("user",)
    show_full_result_count = False
    paginator = LargeTablePaginator
    actions = ("revoke",)
    noun: str

    @admin.display(boolean=True, ordering="revoked_at")
    def revoked(self, obj: Revocable) -> bool:
        return obj.is_revoked

    def has_change_permission(self, request, obj=None) -> bool:
        # Needed by the revoke action; the form itself stays read-only.
        opts = self.opts
        return obj is None and request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def revoke_one(self, request, obj) -> bool:
        raise NotImplementedError

    @admin.action(description="Revoke selected %(verbose_name_plural)s", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = 0
        for obj in queryset.filter(revoked_at__isnull=True).select_related("user"):
            if is_privileged(obj.user) and not can_manage_roles(request):
                continue
            revoked += self.revoke_one(request, obj)
        self.message_user(request, f"Revoked {revoked} {self.noun}(s).", messages.SUCCESS)


@admin.register(Session)
class SessionAdmin(_RevocableAdmin):
    list_display = ("id", "user", "ip", "user_agent", "created_at", "last_seen_at", "revoked")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("user__email", "=id", "=ip")
    noun = "session"

    def revoke_one(self, request, obj):
        return services.session_revoke(
            session_id=obj.pk, reason="operator", actor=request.user, request=request
        )


@admin.register(ApiKey)
class ApiKeyAdmin(_RevocableAdmin):
    """Bots' keys: who, what scopes, from where, last used; never a secret (only its
    encrypted form is stored, and it is not shown either). Revoking stops a key at once."""

    list_display = (
        "label", "user", "key", "kind", "scopes", "created_at", "expires_at", "last_used_at",
        "revoked",
    )  # fmt: skip
    list_filter = ("kind", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "=key", "label")
    exclude = ("secret_encrypted",)
    noun = "API key"

    def revoke_one(self, request, obj):
        return services.api_key_revoke(
            api_key=obj, reason="operator", actor=request.user, request=request
        )


class AuditActionFilter(admin.SimpleListFilter):
    """Known actions, without a DISTINCT over the whole log (other apps add their own
    actions; the search box finds any action by its exact name)."""

    title = "action"
    parameter_name = "action"
    OPERATOR_ACTIONS = (
        "admin_action",
        "admin_added",
        "admin_changed",
        "admin_deleted",
        "admin_login",
        "admin_login_failed",
        "email_verified_by_operator",
        "order_cancelled_by_operator",
        "role_set",
        "two_factor_reset_by_operator",
        "user_locked",
        "user_unlocked",
        "verification_resent_by_operator",
        "wallet_adjusted",
    )

    def lookups(self, request, model_admin):
        names = sorted({*AuditEvent.Action.values, *self.OPERATOR_ACTIONS})
        return [(name, name.replace("_", " ")) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "action", "actor", "target_repr", "ip", "request_id")
    list_filter = (AuditActionFilter, "created_at")
    search_fields = ("=action", "actor__email", "target_repr", "=target_id", "=request_id")
    list_select_related = ("actor",)
    # No date_hierarchy: its year/month links are a DISTINCT over the whole log.
    show_full_result_count = False
    paginator = LargeTablePaginator


@admin.register(EmailVerification, PasswordResetToken)
class SecretTokenAdmin(ReadOnlyAdmin):
    """Only hashes are stored; operators see that a code or link exists, never its value.
    Hidden from operators (they have no permission on these models)."""

    list_display = ("user", "created_at", "expires_at", "used_at")
    list_select_related = ("user",)
    search_fields = ("user__email",)
    exclude = ("code_hash", "token_hash")


@admin.register(TwoFactor)
class TwoFactorAdmin(ReadOnlyAdmin):
    """Who has two-factor login on; the secret is never shown. Hidden from operators;
    admins turn it off for a user who lost the device and the recovery codes."""

    list_display = ("user", "created_at", "enabled_at")
    list_select_related = ("user",)
    search_fields = ("user__email",)
    exclude = ("secret_encrypted", "last_used_step")
    actions = ("reset",)

    def has_change_permission(self, request, obj=None) -> bool:
        # Needed by the reset action; the form itself stays read-only.
        return obj is None and request.user.has_perm("accounts.change_twofactor")

    @admin.action(description="Turn two-factor login off (lost device)", permissions=["change"])
    def reset(self, request, queryset):
        done = sum(
            services.two_factor_reset(user=device.user, actor=request.user, request=request)
            for device in queryset.select_related("user")
        )
        self.message_user(request, f"Two-factor login turned off for {done} user(s).")


@admin.register(RecoveryCode)
class RecoveryCodeAdmin(ReadOnlyAdmin):
    """Only hashes are stored; whether a code was used. Hidden from operators."""

    list_display = ("user", "used_at")
    list_select_related = ("user",)
    search_fields = ("user__email",)
    exclude = ("code_hash",)
