"""In-app notifications, per-user delivery preferences and price alerts."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Notification(models.Model):
    class Kind(models.TextChoices):
        ORDER_FILLED = "order_filled", "Order filled"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"
        ORDER_REJECTED = "order_rejected", "Order rejected"
        PRICE_ALERT = "price_alert", "Price alert"
        NEW_LOGIN = "new_login", "New login"
        EMAIL_VERIFIED = "email_verified", "Email verified"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    # Waiting for the email drain (the user wants this kind by email); cleared when the
    # email went out (``emailed_at`` set), so a retried drain never sends twice.
    email_pending = models.BooleanField(default=False)
    emailed_at = models.DateTimeField(null=True, blank=True)
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
            # The email drain reads only the (few) rows waiting for it.
            models.Index(
                fields=["id"], name="notif_email_pending", condition=Q(email_pending=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.kind} {self.title}"

    @property
    def read(self) -> bool:
        return self.read_at is not None


# Emails for what a user would want to hear about outside the app. Order updates
# are visible in the app and would be noisy by mail; the welcome email already
# covers a verification, so ``email_verified`` is off too.
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
