"""In-app notifications, per-user delivery preferences and price alerts."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Notification(models.Model):
    class Kind(models.TextChoices):
        ORDER_FILLED = "order_filled", "Order filled"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"
        ORDER_REJECTED = "order_rejected", "Order rejected"
        PRICE_ALERT = "price_alert", "Price alert"
        NEW_LOGIN = "new_login", "New login"
        EMAIL_VERIFIED = "email_verified", "Email verified"

    # Indexed by notif_user_created, which leads with it (every fill inserts a notification).
    # Checked once per statement by triggers, not per row by a constraint (migration 0008).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="notifications",
        db_index=False,
        db_constraint=False,
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=["user", "-created_at", "-id"], name="notif_user_created"),
            # Unread counts and the unread filter only touch unread rows.
            models.Index(
                fields=["user", "-created_at"],
                name="notif_user_unread",
                condition=Q(read_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.kind} {self.title}"

    @property
    def read(self) -> bool:
        return self.read_at is not None


# Emails for what a user would want to hear about outside the app: a fill, an alert, a
# new login. Cancellations and rejections follow the user's own action and show in the
# app; the welcome email already covers a verification, so ``email_verified`` is off.
DEFAULT_EMAIL_KINDS: frozenset[str] = frozenset(
    {Notification.Kind.PRICE_ALERT, Notification.Kind.NEW_LOGIN, Notification.Kind.ORDER_FILLED}
)


def default_email_kinds() -> list[str]:
    return sorted(DEFAULT_EMAIL_KINDS)


class NotificationPreference(models.Model):
    """Which kinds a user also receives by email. No row means the defaults."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="notification_preference",
    )
    email_kinds = models.JSONField(default=default_email_kinds)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {', '.join(self.email_kinds) or 'no emails'}"


# Triggered by a poll, not yet notified (see PriceAlert.notified_at).
DUE = Q(active=False, triggered_at__isnull=False, notified_at__isnull=True)


class PriceAlert(models.Model):
    class Condition(models.TextChoices):
        ABOVE = "above"
        BELOW = "below"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="price_alerts"
    )
    coin = models.ForeignKey("markets.Coin", on_delete=models.CASCADE, related_name="+")
    condition = models.CharField(max_length=5, choices=Condition.choices)
    price = models.DecimalField(max_digits=38, decimal_places=18)
    active = models.BooleanField(default=True)
    triggered_at = models.DateTimeField(null=True, blank=True)
    triggered_price = models.DecimalField(max_digits=38, decimal_places=18, null=True, blank=True)
    # Triggering (a poll crosses the alert) and notifying are two steps: the poll marks
    # the alert triggered in PostgreSQL, a task creates the notification and sets this.
    # Triggered but not notified is "due"; a lost task message leaves it due, and the
    # next poll enqueues the task again.
    notified_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # Evaluation on every poll reads only active alerts of the polled coins,
            # as a price range per condition.
            models.Index(
                fields=["coin", "condition", "price"],
                name="alert_active_coin_price",
                condition=Q(active=True),
            ),
            models.Index(fields=["user", "-created_at"], name="alert_user_created"),
            # Every poll checks for due alerts; this stays tiny (usually empty).
            models.Index(fields=["id"], name="alert_due", condition=DUE),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(price__gt=0), name="alert_price_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.coin_id} {self.condition} {self.price}"


class OutboxEmail(models.Model):
    """An email the platform accepted to send: written in the transaction of the change
    that caused it, sent by the drain (:mod:`notifications.outbox`) after commit.

    The row holds what to send, not the message: the message is built when it is sent,
    so codes and reset tokens exist only as hashes in the database, and a request naming
    an address (resend, forgot password) writes the same row whether or not an account
    has it. Losing the broker delays an email until the next sweep, never loses it.
    """

    class Kind(models.TextChoices):
        VERIFICATION = "verification", "Verification code and link"
        PASSWORD_RESET = "password_reset", "Password reset link"
        WELCOME = "welcome", "Welcome"
        NOTIFICATION = "notification", "Notification"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        # Nothing to send by the time it was due (no such account, already verified, ...).
        SKIPPED = "skipped", "Skipped"
        # Gave up after MAX_ATTEMPTS failed sends.
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    # Both references are checked once per statement by triggers (migration 0008).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    # The address a request named when it must not reveal whether an account has it.
    address = models.EmailField(blank=True, default="")
    notification = models.ForeignKey(
        Notification,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A drain's lease: until then no other drain claims the row (see notifications.outbox).
    claimed_until = models.DateTimeField(null=True, blank=True)
    claim = models.UUIDField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # The drain reads only the (few) pending rows, oldest due first.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="outbox_email_due",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.user_id or self.address} ({self.status})"


class UserEventCounter(models.Model):
    """The last event id given to a user (notifications.events): survives pruning, so
    an id older than the log is told apart from one never given."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    last_id = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"events of {self.user_id} up to #{self.last_id}"


class UserEvent(models.Model):
    """One frame pushed on a user's streams, replayable by its per-user ``event_id``."""

    # Checked once per statement by a trigger (migration 0008).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    event_id = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    # The frame's JSON text exactly as pushed (its "id" included): replayed byte for byte.
    frame = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "event_id"], name="user_event_id_unique"),
        ]
        indexes = [models.Index(fields=["created_at"], name="user_event_created")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.event_id} for {self.user_id}"
