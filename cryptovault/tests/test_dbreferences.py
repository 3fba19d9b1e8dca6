"""The references checked per statement (``cryptovault.dbreferences``: orders 0005,
notifications 0008) hold as the foreign keys they replaced did: a child never names a
missing parent, a parent still named is never deleted, and an insert locks its parents
``FOR KEY SHARE`` until it commits."""

import threading
from decimal import Decimal

import psycopg2
import pytest
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from notifications.models import Notification, OutboxEmail, UserEvent
from orders.models import LedgerEntry, Order
from orders.tests.factories import coins_and_prices, user_create

pytestmark = pytest.mark.django_db

# (child table, column, parent table): every reference the migrations converted.
REFERENCES = [
    ("orders_ledgerentry", "user_id", "accounts_user"),
    ("orders_ledgerentry", "order_id", "orders_order"),
    ("notifications_notification", "user_id", "accounts_user"),
    ("notifications_outboxemail", "user_id", "accounts_user"),
    ("notifications_outboxemail", "notification_id", "notifications_notification"),
    ("notifications_userevent", "user_id", "accounts_user"),
]

MISSING = 2**62


def _parents(user: User) -> dict[str, int]:
    coins_and_prices()
    order = Order.objects.create(
        user=user, coin_id="bitcoin", side="buy", type="limit", quantity=Decimal("0.01"),
        limit_price=Decimal("60000"), status=Order.Status.OPEN, reserved_asset="usd",
    )  # fmt: skip
    notification = Notification.objects.create(user=user, kind="order_filled", title="t")
    return {
        "accounts_user": user.pk,
        "orders_order": order.pk,
        "notifications_notification": notification.pk,
    }


def _child_insert(table: str, *, column: str, value: int, parents: dict[str, int]) -> None:
    """Insert two rows into ``table`` (one statement), ``column`` set to ``value`` in the
    second, every other reference to an existing parent."""
    now = timezone.now()
    user_id, order_id = parents["accounts_user"], parents["orders_order"]
    notification_id = parents["notifications_notification"]
    statements = {
        "orders_ledgerentry": (
            "INSERT INTO orders_ledgerentry (user_id, asset, kind, amount, balance_after,"
            " order_id, memo, created_at) VALUES (%(user_id)s, 'usd', 'fee', 0, 0,"
            " %(order_id)s, '', %(now)s), (%(user_id2)s, 'bitcoin', 'fee', 0, 0,"
            " %(order_id2)s, '', %(now)s)"
        ),
        "notifications_notification": (
            "INSERT INTO notifications_notification (user_id, kind, title, body, data,"
            " created_at) VALUES (%(user_id)s, 'order_filled', 't', '', '{}', %(now)s),"
            " (%(user_id2)s, 'order_filled', 't', '', '{}', %(now)s)"
        ),
        "notifications_outboxemail": (
            "INSERT INTO notifications_outboxemail (kind, address, status, attempts,"
            " next_attempt_at, last_error, created_at, notification_id, user_id) VALUES"
            " ('notification', '', 'pending', 0, %(now)s, '', %(now)s, %(notification_id)s,"
            " %(user_id)s), ('notification', '', 'pending', 0, %(now)s, '', %(now)s,"
            " %(notification_id2)s, %(user_id2)s)"
        ),
        "notifications_userevent": (
            "INSERT INTO notifications_userevent (user_id, event_id, kind, frame, created_at)"
            " VALUES (%(user_id)s, 1, 'order', '{}', %(now)s),"
            " (%(user_id2)s, 2, 'order', '{}', %(now)s)"
        ),
    }
    values = {
        "now": now, "user_id": user_id, "order_id": order_id,
        "notification_id": notification_id, "user_id2": user_id, "order_id2": order_id,
        "notification_id2": notification_id,
    }  # fmt: skip
    values[f"{column.removesuffix('_id')}_id2"] = value
    with connection.cursor() as cursor:
        cursor.execute(statements[table], values)


@pytest.mark.parametrize(("child", "column", "parent"), REFERENCES)
def test_a_child_naming_a_missing_parent_is_refused(child, column, parent):
    parents = _parents(user_create())
    with pytest.raises(IntegrityError, match=f"Key \\({column}\\)=\\({MISSING}\\) is not present"):
        with transaction.atomic():
            _child_insert(child, column=column, value=MISSING, parents=parents)
    # Existing parents (and the same parent twice) pass.
    _child_insert(child, column=column, value=parents[parent], parents=parents)


@pytest.mark.parametrize(("child", "column", "parent"), REFERENCES)
def test_the_constraint_is_gone_and_the_triggers_are_there(child, column, parent):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass"
            " AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attname = %s)]",
            [child, child, column],
        )
        assert cursor.fetchone()[0] == 0
        # The child's update check names the reference; its insert check and the parent's
        # delete, key and truncate checks carry the same name.
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass"
            " AND pg_get_triggerdef(oid) LIKE %s",
            [child, f"%cv_ref_updated('{column}', '{parent}', %"],
        )
        (updated,) = cursor.fetchone()
        name = updated.removesuffix("_upd")
        cursor.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE %s",
            [f"{name}\\_%"],
        )
        assert sorted(cursor.fetchall()) == sorted(
            [(child, f"{name}_ins"), (child, f"{name}_upd")]
            + [(parent, f"{name}_{check}") for check in ("del", "key", "trunc")]
        )


def test_a_null_reference_needs_no_parent():
    user = user_create()
    OutboxEmail.objects.create(kind=OutboxEmail.Kind.WELCOME, address="a@example.com")
    LedgerEntry.objects.create(
        user=user, asset="usd", kind="operator_credit", amount=1, balance_after=1
    )


def test_the_orm_insert_of_a_missing_parent_is_refused():
    with pytest.raises(IntegrityError), transaction.atomic():
        UserEvent.objects.create(user_id=MISSING, event_id=1, kind="order", frame="{}")


def _immediate() -> None:
    """Fire the deferred checks now (as the commit would; tests run inside a transaction)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_moving_a_child_to_a_missing_parent_is_refused_at_commit():
    user = user_create()
    parents = _parents(user)
    notification = Notification.objects.get(pk=parents["notifications_notification"])
    with pytest.raises(IntegrityError, match="is not present"), transaction.atomic():
        Notification.objects.filter(pk=notification.pk).update(user_id=MISSING)
        _immediate()
    # To another existing user: fine.
    with transaction.atomic():
        Notification.objects.filter(pk=notification.pk).update(user_id=user_create().pk)
        _immediate()


@pytest.mark.parametrize(("child", "column", "parent"), REFERENCES)
def test_deleting_a_parent_still_named_is_refused_at_commit(child, column, parent):
    parents = _parents(user_create())
    # A user named by this child only (the other tables' foreign keys would refuse first).
    parents["accounts_user"] = user_create().pk
    _child_insert(child, column=column, value=parents[parent], parents=parents)
    with pytest.raises(IntegrityError, match="is still referenced"), transaction.atomic():
        with connection.cursor() as cursor:
            # Raw SQL: Django's on_delete would delete or protect the children first.
            cursor.execute(f"DELETE FROM {parent} WHERE id = %s", [parents[parent]])  # noqa: S608
        _immediate()
    with pytest.raises(IntegrityError, match="is still referenced"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {parent} SET id = %s WHERE id = %s", [MISSING, parents[parent]])  # noqa: S608
        _immediate()


def test_deleting_the_children_then_the_parent_in_one_transaction_passes():
    """The parent's check is deferred, as the foreign key's was: only what is left at
    commit counts."""
    user = user_create()
    parents = _parents(user)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM notifications_notification WHERE user_id = %s", [user.pk])
        cursor.execute(
            "INSERT INTO notifications_notification (user_id, kind, title, body, data, created_at)"
            " VALUES (%s, 'order_filled', 't', '', '{}', now())",
            [user.pk],
        )
        cursor.execute("DELETE FROM notifications_notification WHERE user_id = %s", [user.pk])
        _immediate()
    assert not Notification.objects.filter(pk=parents["notifications_notification"]).exists()


def test_django_deletes_a_user_with_everything_that_names_them():
    user = user_create(usd="100")
    notification = Notification.objects.create(user=user, kind="order_filled", title="t")
    OutboxEmail.objects.create(
        kind=OutboxEmail.Kind.NOTIFICATION, user=user, notification=notification
    )
    UserEvent.objects.create(user=user, event_id=1, kind="order", frame="{}")
    with transaction.atomic():
        user.delete()
        _immediate()
    assert not LedgerEntry.objects.filter(user_id=user.pk).exists()
    assert not OutboxEmail.objects.filter(notification_id=notification.pk).exists()


def test_truncating_a_parent_alone_is_refused():
    parents = _parents(user_create())
    _child_insert(
        "notifications_outboxemail",
        column="notification_id",
        value=parents["notifications_notification"],
        parents=parents,
    )
    with pytest.raises(IntegrityError, match="cannot truncate"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE notifications_notification")
    assert Notification.objects.filter(pk=parents["notifications_notification"]).exists()


def _other_connection():
    db = settings.DATABASES["default"]
    other = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
        port=db["PORT"] or None,
    )  # fmt: skip
    other.autocommit = True
    return other


@pytest.mark.django_db(transaction=True)
def test_an_insert_holds_its_parents_until_it_commits():
    """The lock the foreign key's check took: a concurrent delete of the user waits for the
    insert's commit (and then finds the child), it cannot slip in between."""
    user = user_create()
    other = _other_connection()
    try:
        with transaction.atomic():
            UserEvent.objects.create(user=user, event_id=1, kind="order", frame="{}")
            with other.cursor() as cursor, pytest.raises(psycopg2.errors.LockNotAvailable):
                cursor.execute(
                    "SELECT FROM accounts_user WHERE id = %s FOR UPDATE NOWAIT", [user.pk]
                )
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("DELETE FROM accounts_user WHERE id = %s", [user.pk])
            with pytest.raises(psycopg2.errors.ForeignKeyViolation):
                cursor.execute("COMMIT")
    finally:
        other.close()
    assert User.objects.filter(pk=user.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_an_insert_racing_the_delete_of_its_parent_is_refused():
    """The insert's check waits for the uncommitted delete of its parent, then finds it
    gone."""
    user = user_create()
    other = _other_connection()
    outcome: list[BaseException | None] = []

    def insert() -> None:
        try:
            with transaction.atomic():
                UserEvent.objects.create(user_id=user.pk, event_id=1, kind="order", frame="{}")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        finally:
            connection.close()

    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            for table in ("orders_ledgerentry", "orders_balance"):
                cursor.execute(f"DELETE FROM {table} WHERE user_id = %s", [user.pk])  # noqa: S608
            cursor.execute("DELETE FROM accounts_user WHERE id = %s", [user.pk])
            thread = threading.Thread(target=insert)
            thread.start()
            thread.join(0.5)
            assert thread.is_alive()  # waiting for the delete's row lock
            cursor.execute("COMMIT")
            thread.join(10)
    finally:
        other.close()
    assert len(outcome) == 1 and isinstance(outcome[0], IntegrityError)
    assert not UserEvent.objects.filter(user_id=user.pk).exists()
