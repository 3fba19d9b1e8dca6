from collections.abc import Iterator
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, email: str | None) -> "User":
        return self.get(email__iexact=email)

    def create_user(self, email: str, password: str | None = None, **fields) -> "User":
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **fields) -> "User":
        fields.update(
            is_staff=True,
            is_superuser=True,
            role=User.Role.ADMIN,
            email_verified_at=fields.get("email_verified_at") or timezone.now(),
        )
        return self.create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A CryptoVault account. Email is the login and is unique case-insensitively."""

    class Role(models.TextChoices):
        USER = "user", "User"
        OPERATOR = "operator", "Operator"
        ADMIN = "admin", "Admin"

    email = models.EmailField(max_length=254, unique=True)
    username = models.CharField(max_length=30, null=True, blank=True)
    name = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # Google's stable account id, set when the user signs in with Google.
    google_sub = models.CharField(max_length=255, null=True, blank=True, unique=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # Bumped by "revoke all sessions": part of the session auth hash, so every Django
    # (admin) session made before the bump stops authenticating (see get_session_auth_hash).
    sessions_epoch = models.PositiveIntegerField(default=0, editable=False)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
            models.UniqueConstraint(
                Lower("username"),
                name="accounts_user_username_ci_unique",
                condition=models.Q(username__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def is_email_verified(self) -> bool:
        return self.email_verified_at is not None

    # Django stores this hash in the session at login and compares it on every request
    # (django.contrib.auth.get_user), flushing the session on a mismatch. Django hashes
    # only the password; the epoch makes "revoke all sessions" end admin sessions too,
    # with no extra query: the user row is read anyway. Both live in PostgreSQL, so no
    # cache loss can bring a revoked session back.
    SESSION_AUTH_SALT = "accounts.User.get_session_auth_hash"

    def _session_auth_hash(self, secret: str | bytes) -> str:
        value = f"{self.password}:{self.sessions_epoch}"
        digest = salted_hmac(self.SESSION_AUTH_SALT, value, secret=secret, algorithm="sha256")
        return digest.hexdigest()

    def get_session_auth_hash(self) -> str:
        return self._session_auth_hash(settings.SECRET_KEY)

    def get_session_auth_fallback_hash(self) -> Iterator[str]:
        for secret in settings.SECRET_KEY_FALLBACKS:
            yield self._session_auth_hash(secret)


class EmailVerification(models.Model):
    """One issued verification: a 6-digit code and a link token, both stored hashed.

    Issuing a new one (signup, resend) replaces the previous one for the user.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="email_verifications")
    code_hash = models.CharField(max_length=64)
    token_hash = models.CharField(max_length=64, unique=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"email verification of {self.user_id}"


class PasswordResetToken(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="password_resets")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"password reset of {self.user_id}"


class Revocable(models.Model):
    """A credential that is revoked, not deleted: the audit trail keeps it, with why.
    Subclasses have ``user`` and ``created_at``: a user's live ones are listed newest first
    through a partial index."""

    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=32, blank=True)

    class Meta:
        abstract = True
        indexes = [
            models.Index(
                fields=["user", "created_at"],
                name="%(app_label)s_%(class)s_live_idx",
                condition=models.Q(revoked_at__isnull=True),
            )
        ]

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class Session(Revocable):
    """A login session, the source of truth (Redis only caches it, see
    ``accounts.session_store``): live while not revoked and before ``idle_expires_at``;
    ``refresh_jti`` is the only refresh token of the session that may still be used."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="login_sessions")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    idle_expires_at = models.DateTimeField()
    refresh_jti = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"session {self.id} of {self.user_id}"


class AuditEvent(models.Model):
    """Security and operator audit log. Rows are never updated."""

    class Action(models.TextChoices):
        SIGNUP = "signup"
        EMAIL_VERIFIED = "email_verified"
        LOGIN = "login"
        LOGIN_FAILED = "login_failed"
        LOCKOUT = "lockout"
        LOGOUT = "logout"
        PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an action name
        PASSWORD_RESET_REQUESTED = "password_reset_requested"  # noqa: S105 - an action name
        PASSWORD_RESET = "password_reset"  # noqa: S105 - an action name
        SESSION_REVOKED = "session_revoked"
        REFRESH_REUSED = "refresh_reused"
        GOOGLE_LOGIN = "google_login"
        PROFILE_UPDATED = "profile_updated"
        LOGIN_OTP_FAILED = "login_otp_failed"
        RECOVERY_CODE_USED = "recovery_code_used"
        TWO_FACTOR_ENABLED = "two_factor_enabled"
        TWO_FACTOR_DISABLED = "two_factor_disabled"
        API_KEY_CREATED = "api_key_created"
        API_KEY_REVOKED = "api_key_revoked"

    # Not limited to the choices above: other apps and admin actions record their own.
    action = models.CharField(max_length=64, db_index=True)
    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"


class TwoFactor(models.Model):
    """A user's TOTP (RFC 6238) authenticator. Set up, it is pending until a first code
    confirms it (``enabled_at``); only then does login ask for a code."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="two_factor")
    # The base32 secret, Fernet-encrypted (accounts.crypto.secret_encrypt).
    secret_encrypted = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    enabled_at = models.DateTimeField(null=True, blank=True)
    # The last accepted 30 s time step: a code is good once (RFC 6238 section 5.2).
    last_used_step = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"two-factor of {self.user_id}"

    @property
    def is_enabled(self) -> bool:
        return self.enabled_at is not None


class RecoveryCode(models.Model):
    """A single-use second factor, issued ten at a time when 2FA is enabled; hashed."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "code_hash"], name="accounts_recovery_unique")
        ]

    def __str__(self) -> str:
        return f"recovery code of {self.user_id}"


class ApiKey(Revocable):
    """A key for bots: the public ``key`` plus either an HMAC secret (stored Fernet-
    encrypted, shown once) or an Ed25519 public key (no secret stored at all)."""

    class Kind(models.TextChoices):
        HMAC = "hmac", "HMAC-SHA256"
        ED25519 = "ed25519", "Ed25519"

    class Scope(models.TextChoices):
        READ = "read"
        TRADE = "trade"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=100)
    key = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    scopes = models.JSONField(default=list)
    ip_allowlist = models.JSONField(default=list, blank=True)
    secret_encrypted = models.TextField(blank=True)
    # The raw 32-byte Ed25519 public key, base64.
    public_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.label} ({self.key[:8]}...)"
