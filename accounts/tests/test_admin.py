"""The admin as the operations console: every page loads for operators and admins in a
bounded number of queries, actions go through services and are audited, operators
cannot escalate, everyone else is kept out."""

import importlib
import itertools
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_redis import get_redis_connection

from accounts import services
from accounts.audit import audit_record
from accounts.models import (
    ApiKey,
    AuditEvent,
    PasswordResetToken,
    RecoveryCode,
    Session,
    TwoFactor,
    User,
)
from accounts.roles import ADMIN_GROUP, OPERATOR_GROUP, roles_on_post_migrate
from accounts.tests.factories import PASSWORD, user_create
from cryptovault.admin import LargeTablePaginator
from cryptovault.dashboard import rows_since
from markets.models import Coin
from markets.selectors import prices_snapshot
from markets.services import (
    history_append,
    latest_prices_record,
    prices_record,
    status_sample_record,
)
from markets.sources import BACKOFF_UNTIL_KEY, MarketQuote
from notifications.services import (
    notification_create,
    notification_preferences_update,
    price_alert_create,
)
from orders.models import LedgerEntry, Order
from orders.services import order_place, order_queue_process, wallet_adjust
from orders.tests.factories import coins_and_prices

pytestmark = pytest.mark.django_db
_seq = itertools.count(1)


def staff_create(role: str) -> User:
    user = user_create()
    return services.user_role_set(user=user, role=role)


@pytest.fixture
def operator():
    return staff_create(User.Role.OPERATOR)


@pytest.fixture
def admin_user():
    # An admin by role (the admin group), not a superuser: "admin has everything".
    return staff_create(User.Role.ADMIN)


@pytest.fixture
def operator_client(operator):
    client = Client()  # its own cookies: a test may also use admin_client
    client.force_login(operator)
    return client


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def seed(rows: int) -> None:
    """``rows`` rows of every model the admin shows, made through the services."""
    now = timezone.now()
    numbers = [next(_seq) for _ in range(rows)]
    prices = {f"coin-{n}": "100" for n in numbers}
    coins_and_prices(prices)
    history_append(as_of=now, prices={coin: Decimal(p) for coin, p in prices.items()})
    latest_prices_record(
        as_of=now,
        source="coingecko",
        quotes=[
            MarketQuote(coin, coin, coin, Decimal(p), None, None, None, None)
            for coin, p in prices.items()
        ],
    )
    for n, coin in zip(numbers, prices, strict=True):
        # No password: hashing one costs more than the rest of the row.
        user = User.objects.create_user(email=f"seed{n}@example.com", password=None)
        wallet_adjust(user=user, asset="usd", amount=Decimal(1000), reason="seed")
        services.session_start(user=user)
        audit_record(action="seeded", actor=user, target=user)
        services.email_verification_issue(user=user)
        PasswordResetToken.objects.create(
            user=user, token_hash=uuid.uuid4().hex, expires_at=now + timedelta(hours=1)
        )
        ApiKey.objects.create(user=user, label=f"bot {n}", key=uuid.uuid4().hex, kind="hmac")
        TwoFactor.objects.create(user=user, secret_encrypted=uuid.uuid4().hex)
        RecoveryCode.objects.create(user=user, code_hash=uuid.uuid4().hex)
        # One filled market order (ledger entries of a trade), one pending limit order.
        order_place(user=user, coin_id=coin, side="buy", type="market", quantity=Decimal(1))
        order_queue_process(user_id=user.pk)
        order_place(
            user=user, coin_id=coin, side="buy", type="limit",
            quantity=Decimal(1), limit_price=Decimal(50),
        )  # fmt: skip
        notification_create(user=user, kind="order_filled", title=f"Filled {n}")
        price_alert_create(user=user, coin_id=coin, condition="above", price=Decimal(200))
        notification_preferences_update(user=user, email={"order_filled": False})
        interval = IntervalSchedule.objects.create(every=n, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=f"task {n}", task="accounts.prune", interval=interval)
        CrontabSchedule.objects.create(minute=str(n % 60), hour=str(n % 24))
        SolarSchedule.objects.create(event="sunrise", latitude=n % 90, longitude=n % 180)
        ClockedSchedule.objects.create(clocked_time=now + timedelta(days=n))
    status_sample_record()


def model_admins():
    registered = (model for model in apps.get_models() if admin.site.is_registered(model))
    return sorted(
        ((model, admin.site.get_model_admin(model)) for model in registered),
        key=lambda item: item[0]._meta.label,
    )


def can_view(user: User, model) -> bool:
    opts = model._meta
    return any(
        user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")
        for action in ("view", "change")
    )


def changelist_queries(client) -> dict[str, int]:
    counts = {}
    for model, _ in model_admins():
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        if response.status_code == 200:
            counts[model._meta.label] = len(queries)
    return counts


def test_every_admin_page_loads_in_bounded_queries():
    roles = (User.Role.OPERATOR, User.Role.ADMIN)
    staff = {role: staff_create(role) for role in roles}
    clients = {role: Client() for role in roles}
    for role in roles:
        clients[role].force_login(staff[role])
    seed(1)
    with_one_row = {role: changelist_queries(clients[role]) for role in roles}
    seed(19)
    with_twenty_rows = {role: changelist_queries(clients[role]) for role in roles}

    for role in roles:
        client = clients[role]
        # The same number of queries for 1 or 20 rows: no query per row (N+1).
        grows = {
            label: (count, with_twenty_rows[role].get(label))
            for label, count in with_one_row[role].items()
            if with_twenty_rows[role].get(label) != count
        }
        assert grows == {}, role
        for model, model_admin in model_admins():
            label = model._meta.label
            allowed = can_view(staff[role], model)
            assert (label in with_twenty_rows[role]) == allowed, (role, label)
            info = f"{model._meta.app_label}_{model._meta.model_name}"
            if not allowed:
                assert client.get(reverse(f"admin:{info}_changelist")).status_code == 403
                continue
            obj = model._default_manager.order_by("pk").first()
            assert obj is not None, label
            change = client.get(reverse(f"admin:{info}_change", args=[obj.pk]))
            assert change.status_code == 200, (role, label)
            can_add = model_admin.has_add_permission(change.wsgi_request)
            add = client.get(reverse(f"admin:{info}_add"))
            assert add.status_code == (200 if can_add else 403), (role, label)
        assert client.get(reverse("admin:index")).status_code == 200
        search = reverse("admin:accounts_user_changelist") + "?q=seed1"
        assert client.get(search).status_code == 200


def test_dashboard_shows_prices_queues_and_today_in_bounded_queries(
    operator_client, django_assert_max_num_queries
):
    url = reverse("admin-dashboard")
    empty = operator_client.get(url)
    assert empty.status_code == 200
    assert b"No prices recorded yet" in empty.content

    seed(1)
    with CaptureQueriesContext(connection) as queries:
        assert operator_client.get(url).status_code == 200
    seed(19)
    redis = get_redis_connection("default")
    redis.lpush("orders", "a", "b", "c")
    redis.lpush("celery\x06\x163", "d")
    with django_assert_max_num_queries(len(queries)):
        response = operator_client.get(url)
    context = response.context
    assert context["prices"]["source"] == "coingecko"
    assert context["prices"]["age_seconds"] < 60
    assert context["prices"]["coins"] == 20
    assert context["prices"]["problems"] == []
    # No worker runs here, so none reports messages in flight.
    assert context["queues"] == {"waiting": {"celery": 1, "orders": 3}, "unacked": None}
    assert b"no worker answered" in response.content
    # 20 seeded users plus the operator; 20 filled and 20 pending orders (no worker ran).
    assert context["today"]["signups"] == 21
    assert context["today"]["orders"] == 40
    assert context["today"]["pending_orders"] == 20
    assert b"Operations dashboard" in response.content
    assert reverse("admin-dashboard").encode() in operator_client.get("/admin/").content


def test_rows_since_counts_only_todays_rows():
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    user_create(date_joined=midnight - timedelta(days=1))
    user_create(date_joined=midnight - timedelta(seconds=1))
    assert rows_since(User, "date_joined", midnight) == 0
    user_create()
    user_create()
    assert rows_since(User, "date_joined", midnight) == 2
    assert rows_since(User, "date_joined", midnight - timedelta(days=2)) == 4


def run_action(client, model: str, action: str, objects) -> object:
    return client.post(
        reverse(f"admin:{model}_changelist"),
        {"action": action, "_selected_action": [o.pk for o in objects]},
    )


def audited(action: str, *, actor: User, target=None) -> AuditEvent:
    events = AuditEvent.objects.filter(action=action, actor=actor)
    if target is not None:
        events = events.filter(target_id=str(target.pk))
    event = events.get()
    assert timezone.now() - event.created_at < timedelta(minutes=1)
    return event


def test_verify_email_credits_the_bonus_once_and_is_audited(operator_client, operator):
    user = user_create(verified=False)
    response = run_action(operator_client, "accounts_user", "verify_email", [user])
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.is_email_verified
    assert LedgerEntry.objects.filter(user=user, kind="signup_bonus").count() == 1
    audited("email_verified_by_operator", actor=operator, target=user)
    run = audited("admin_action", actor=operator)
    assert run.data == {"model": "accounts.user", "action": "verify_email", "ids": [str(user.pk)]}

    run_action(operator_client, "accounts_user", "verify_email", [user])
    assert LedgerEntry.objects.filter(user=user, kind="signup_bonus").count() == 1


def test_resend_verification_mails_a_fresh_code(
    operator_client, operator, django_capture_on_commit_callbacks
):
    user = user_create(verified=False)
    with django_capture_on_commit_callbacks(execute=True):
        run_action(operator_client, "accounts_user", "resend_verification", [user])
    assert [m.to for m in mail.outbox] == [[user.email]]
    assert "code" in mail.outbox[0].body.lower()
    audited("verification_resent_by_operator", actor=operator, target=user)


def test_lock_ends_sessions_and_unlock_restores(operator_client, operator, user):
    session, _ = services.session_start(user=user)
    run_action(operator_client, "accounts_user", "lock", [user])
    user.refresh_from_db()
    session.refresh_from_db()
    assert not user.is_active
    assert session.revoked_reason == "locked"
    audited("user_locked", actor=operator, target=user)

    run_action(operator_client, "accounts_user", "unlock", [user])
    user.refresh_from_db()
    assert user.is_active
    audited("user_unlocked", actor=operator, target=user)


def test_revoke_all_sessions_and_one_session(operator_client, operator, user):
    first, _ = services.session_start(user=user)
    second, _ = services.session_start(user=user)
    services.session_start(user=user_create())
    page = operator_client.get(reverse("admin:accounts_user_change", args=[user.pk]))
    sessions_url = reverse("admin:accounts_session_changelist") + f"?user__id__exact={user.pk}"
    assert sessions_url.encode() in page.content.replace(b"&amp;", b"&")
    listed = operator_client.get(sessions_url).context["cl"].result_list
    assert {s.pk for s in listed} == {first.pk, second.pk}
    run_action(operator_client, "accounts_session", "revoke", [first])
    assert Session.objects.get(pk=first.pk).revoked_reason == "operator"
    assert Session.objects.get(pk=second.pk).revoked_at is None

    run_action(operator_client, "accounts_user", "revoke_sessions", [user])
    assert not Session.objects.filter(user=user, revoked_at__isnull=True).exists()
    event = audited("session_revoked", actor=operator, target=user)
    assert event.data["session_ids"] == [second.pk]


def test_admin_sets_roles_with_staff_flag_and_group_in_step(admin_client, admin_user, user):
    run_action(admin_client, "accounts_user", "set_role_operator", [user])
    user = User.objects.get(pk=user.pk)
    assert (user.role, user.is_staff) == ("operator", True)
    assert list(user.groups.values_list("name", flat=True)) == [OPERATOR_GROUP]
    assert audited("role_set", actor=admin_user, target=user).data == {
        "role": "operator",
        "previous": "user",
    }

    run_action(admin_client, "accounts_user", "set_role_user", [user])
    user = User.objects.get(pk=user.pk)
    assert (user.role, user.is_staff, user.groups.count()) == ("user", False, 0)
    assert not user.has_perm("orders.change_order")


def test_operator_cannot_escalate(operator_client, operator, admin_user, user):
    users = reverse("admin:accounts_user_changelist")
    choices = dict(operator_client.get(users).context["action_form"].fields["action"].choices)
    assert {"lock", "verify_email", "revoke_sessions"} <= set(choices)
    assert not {"set_role_admin", "set_role_operator", "set_role_user"} & set(choices)

    # Not offered, and refused when posted anyway.
    for who in (operator, user):
        run_action(operator_client, "accounts_user", "set_role_admin", [who])
    assert User.objects.get(pk=operator.pk).role == "operator"
    assert User.objects.get(pk=user.pk).role == "user"

    privileged = {
        "role": "admin",
        "is_staff": "on",
        "is_superuser": "on",
        "groups": [Group.objects.get(name=ADMIN_GROUP).pk],
        "user_permissions": [Permission.objects.get(codename="change_group").pk],
        "email": "taken-over@example.com",
        "is_active": "on",
    }
    # Their own account and other staff accounts are read-only to operators...
    for staff in (operator, admin_user):
        change = reverse("admin:accounts_user_change", args=[staff.pk])
        assert operator_client.get(change).status_code == 200
        assert operator_client.post(change, {"name": "x", **privileged}).status_code == 403
    # ...and on a regular user the privileged fields are read-only.
    change = reverse("admin:accounts_user_change", args=[user.pk])
    assert operator_client.post(change, {"name": "Renamed", **privileged}).status_code == 302
    for who in (operator, user):
        fresh = User.objects.get(pk=who.pk)
        assert not fresh.is_superuser and fresh.role != "admin"
        assert not fresh.groups.filter(name=ADMIN_GROUP).exists()
        assert not fresh.user_permissions.exists()
    renamed = User.objects.get(pk=user.pk)
    assert (renamed.name, renamed.email, renamed.is_staff) == ("Renamed", user.email, False)
    audited("admin_changed", actor=operator, target=user)

    assert not operator.has_perm("auth.change_group")
    for url in (
        reverse("admin:auth_group_changelist"),
        reverse("admin:auth_group_change", args=[Group.objects.get(name=OPERATOR_GROUP).pk]),
        reverse("admin:accounts_user_add"),
        reverse("admin:auth_user_password_change", args=[user.pk]),
        reverse("admin:accounts_emailverification_changelist"),
    ):
        assert operator_client.get(url).status_code == 403, url

    # Actions skip staff accounts: an operator cannot lock out an admin.
    run_action(operator_client, "accounts_user", "lock", [admin_user, operator])
    assert User.objects.get(pk=admin_user.pk).is_active
    assert User.objects.get(pk=operator.pk).is_active


def test_admin_edits_privileges_and_the_change_is_audited(admin_client, admin_user, user):
    change = reverse("admin:accounts_user_change", args=[user.pk])
    body = {"email": user.email, "name": "", "is_superuser": "on", "is_staff": "on"}
    assert admin_client.post(change, body).status_code == 302
    assert User.objects.get(pk=user.pk).is_superuser
    event = audited("admin_changed", actor=admin_user, target=user)
    assert event.data["changes"] == [{"changed": {"fields": ["Is staff", "Superuser status"]}}]

    other = user_create(username="Taken_Name")
    for username, error in (("a b", "Use 3 to 30"), ("taken_NAME", "is taken")):
        response = admin_client.post(change, {**body, "username": username})
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert error in str(errors.get("username")), errors
    assert User.objects.get(pk=user.pk).username is None
    taken = admin_client.post(change, {**body, "email": other.email.upper()})
    assert "already exists" in str(taken.context["adminform"].form.errors["email"])
    assert admin_client.post(change, {**body, "email": " Moved@Example.COM"}).status_code == 302
    assert User.objects.get(pk=user.pk).email == "moved@example.com"
    assert User.objects.get(pk=other.pk).username == "Taken_Name"


@pytest.mark.parametrize("url", ["/admin/", "/admin/dashboard/", "/admin/accounts/user/"])
def test_non_staff_are_refused(client, user, url):
    assert client.get(url).status_code == 302  # to the admin login
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_operators_run_periodic_tasks_switches_audited(operator_client, operator):
    interval = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(
        name="markets-prices-poll", task="markets.prices_poll", interval=interval
    )
    run_action(operator_client, "django_celery_beat_periodictask", "disable_tasks", [task])
    assert not PeriodicTask.objects.get(pk=task.pk).enabled
    assert audited("admin_action", actor=operator).data["action"] == "disable_tasks"
    change = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    assert operator_client.get(change).status_code == 200


def periodic_task_form(periodic: PeriodicTask, /, **changes) -> dict:
    """The change form of ``periodic`` as the browser posts it (the full beat form)."""
    form = {
        "name": periodic.name,
        "regtask": "",
        "task": periodic.task,
        "enabled": "on" if periodic.enabled else "",
        "description": periodic.description,
        "interval": periodic.interval_id or "",
        "crontab": "",
        "solar": "",
        "clocked": "",
        "start_time_0": "",
        "start_time_1": "",
        "one_off": "",
        "args": periodic.args,
        "kwargs": periodic.kwargs,
        "expires_0": "",
        "expires_1": "",
        "expire_seconds": "",
        "queue": periodic.queue or "",
        "exchange": "",
        "routing_key": "",
        "priority": "",
        "headers": periodic.headers,
    }
    form.update(changes)
    return {key: value for key, value in form.items() if value is not False}


def test_operators_switch_periodic_tasks_but_cannot_change_what_they_run(
    operator_client, operator, admin_client
):
    every_10s = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
    every_1s = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(
        name="limit-orders-match", task="orders.limit_orders_match", interval=every_10s
    )
    change = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    form = operator_client.get(change).context["adminform"].form
    assert sorted(form.fields) == ["description", "enabled"]

    # Everything an attacker would change, posted as the full form: only the switch and
    # the description are taken.
    made_up = {
        "name": "renamed",
        "task": "notifications.price_alerts_fire",
        "args": '[{"bitcoin": "1"}, 9999999999]',
        "kwargs": '{"prices": {"bitcoin": "1"}}',
        "queue": "celery",
        "interval": every_1s.pk,
        "headers": '{"x": 1}',
    }
    posted = periodic_task_form(task, enabled=False, description="paused", **made_up)
    assert operator_client.post(change, posted).status_code == 302
    stored = PeriodicTask.objects.get(pk=task.pk)
    assert (stored.enabled, stored.description) == (False, "paused")
    assert (stored.name, stored.task, stored.args, stored.kwargs) == (
        "limit-orders-match",
        "orders.limit_orders_match",
        "[]",
        "{}",
    )
    assert (stored.queue, stored.interval_id, stored.headers) == (None, every_10s.pk, "{}")
    changed = audited("admin_changed", actor=operator, target=task).data["changes"]
    assert changed == [{"changed": {"fields": ["Enabled", "Description"]}}]

    assert operator_client.post(change, periodic_task_form(stored, enabled="on")).status_code == 302
    assert PeriodicTask.objects.get(pk=task.pk).enabled is True

    # No new tasks, no deletions, no schedule edits for operators.
    add = reverse("admin:django_celery_beat_periodictask_add")
    assert operator_client.get(add).status_code == 403
    delete = reverse("admin:django_celery_beat_periodictask_delete", args=[task.pk])
    assert operator_client.post(delete, {"post": "yes"}).status_code == 403
    interval = reverse("admin:django_celery_beat_intervalschedule_change", args=[every_10s.pk])
    assert operator_client.post(interval, {"every": 1, "period": "seconds"}).status_code == 403
    assert IntervalSchedule.objects.get(pk=every_10s.pk).every == 10
    assert PeriodicTask.objects.filter(pk=task.pk).exists()

    # Admins define tasks.
    stored = PeriodicTask.objects.get(pk=task.pk)
    edited = periodic_task_form(stored, kwargs='{"note": 1}', interval=every_1s.pk)
    assert admin_client.post(change, edited).status_code == 302
    stored = PeriodicTask.objects.get(pk=task.pk)
    assert (stored.kwargs, stored.interval_id) == ('{"note": 1}', every_1s.pk)


def test_the_migration_takes_back_what_operators_may_no_longer_do():
    migration = importlib.import_module(
        "accounts.migrations.0005_operators_only_switch_periodic_tasks"
    )
    operator = Group.objects.get(name=OPERATOR_GROUP)
    models = ("periodictask", "intervalschedule", "crontabschedule", "solarschedule")
    beat = Permission.objects.filter(
        content_type__app_label="django_celery_beat",
        content_type__model__in=[*models, "clockedschedule"],
    )
    operator.permissions.add(*beat)  # all of it, as operators held until now

    class SchemaEditor:
        connection = connection

    migration.operators_revoke(apps, SchemaEditor())
    assert sorted(operator.permissions.filter(pk__in=beat).values_list("codename", flat=True)) == [
        "change_periodictask",
        "view_clockedschedule",
        "view_crontabschedule",
        "view_intervalschedule",
        "view_periodictask",
        "view_solarschedule",
    ]


def test_role_groups_from_the_migration():
    operator = Group.objects.get(name=OPERATOR_GROUP)
    granted = {
        f"{app}.{codename}"
        for app, codename in operator.permissions.values_list("content_type__app_label", "codename")
    }
    assert {
        "accounts.change_user",
        "orders.change_balance",
        "orders.change_order",
        "markets.change_coin",
        "notifications.view_notification",
        "django_celery_beat.change_periodictask",
        "accounts.view_auditevent",
    } <= granted
    assert (
        not {
            "auth.change_group",
            "auth.change_permission",
            "accounts.add_user",
            "accounts.delete_user",
            "accounts.change_auditevent",
            "orders.change_ledgerentry",
            "django_celery_beat.add_periodictask",
            "django_celery_beat.delete_periodictask",
            "django_celery_beat.change_intervalschedule",
            "django_celery_beat.change_crontabschedule",
        }
        & granted
    )
    assert Group.objects.get(name=ADMIN_GROUP).permissions.count() == Permission.objects.count()


def test_admin_adds_a_user_and_operators_cannot(admin_client, operator_client):
    add = reverse("admin:accounts_user_add")
    assert operator_client.get(add).status_code == 403
    body = {"email": "New.Person@Example.com", "password1": PASSWORD, "password2": PASSWORD}
    assert admin_client.post(add, body).status_code == 302
    created = User.objects.get(email="new.person@example.com")
    assert created.check_password(PASSWORD)
    assert (created.role, created.is_staff, created.is_email_verified) == ("user", False, False)
    again = admin_client.post(add, {**body, "email": "NEW.person@example.com"})
    assert "already exists" in str(again.context["adminform"].form.errors["email"])


def test_dashboard_survives_a_broker_outage_and_reads_the_poll_schedule(operator_client, settings):
    every = {"markets.prices_poll": 10, "markets.tickers_poll": 6, "accounts.prune": 1}
    for task, seconds in every.items():
        interval = IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=task, task=task, interval=interval)
    response = operator_client.get(reverse("admin-dashboard"))
    assert response.context["prices"]["calls_per_minute"] == 16.0
    assert response.context["prices"]["budget_per_minute"] == 30
    PeriodicTask.objects.filter(task="markets.tickers_poll").update(enabled=False)

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = operator_client.get(reverse("admin-dashboard"))
    assert response.status_code == 200
    assert response.context["queues"] is None
    assert response.context["queues_error"].startswith("Unavailable")
    assert response.context["prices"]["calls_per_minute"] == 6.0


def test_admin_login_is_audited_and_rate_limited(client, operator, user, monkeypatch):
    # Hour windows: a minute window could roll over mid-test and reset the count.
    monkeypatch.setattr("cryptovault.admin.ADMIN_LOGIN_RATE", "4/h")
    login = reverse("admin:login")
    assert login == "/admin/login/"
    assert client.post(login, {"username": operator.email, "password": PASSWORD}).status_code == 302
    audited("admin_login", actor=operator, target=operator)
    client.logout()

    # A regular user's right password does not open the console.
    assert client.post(login, {"username": user.email, "password": PASSWORD}).status_code == 200
    failed = AuditEvent.objects.get(action="admin_login_failed")
    assert failed.data == {"identifier": user.email, "reason": "not_staff"}
    statuses = [
        client.post(login, {"username": operator.email, "password": "wrong"}).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    refused = client.post(login, {"username": operator.email, "password": PASSWORD})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0


def test_big_tables_list_with_an_estimate_unless_filtered(admin_client, monkeypatch):
    for _ in range(3):
        audit_record(action="before_analyze")
    analysed = AuditEvent.objects.count()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE accounts_auditevent")
    for _ in range(2):
        audit_record(action="after_analyze")
    monkeypatch.setattr(LargeTablePaginator, "EXACT_UP_TO", 0)

    url = reverse("admin:accounts_auditevent_changelist")
    assert admin_client.get(url).context["cl"].result_count == analysed
    filtered = admin_client.get(url, {"q": "after_analyze"}).context["cl"]
    assert filtered.result_count == 2


def test_operators_track_coins_and_act_on_orders_through_services(operator_client, operator):
    coins_and_prices({"bitcoin": "65000", "ethereum": "3000"})
    ethereum = Coin.objects.get(pk="ethereum")
    run_action(operator_client, "markets_coin", "untrack", [ethereum])
    assert not Coin.objects.get(pk="ethereum").tracked
    assert "ethereum" not in prices_snapshot()["prices"]  # through coin_set_tracked
    run = audited("admin_action", actor=operator)
    assert run.data == {"model": "markets.coin", "action": "untrack", "ids": ["ethereum"]}

    trader = User.objects.create_user(email="trader@example.com", password=None)
    wallet_adjust(user=trader, asset="usd", amount=Decimal(1000), reason="test")
    order, _ = order_place(
        user=trader, coin_id="bitcoin", side="buy", type="limit",
        quantity=Decimal("0.01"), limit_price=Decimal(60000),
    )  # fmt: skip
    change = reverse("admin:orders_order_change", args=[order.pk])
    assert operator_client.get(change).status_code == 200
    assert operator_client.post(change, {"status": "filled"}).status_code == 403
    run_action(operator_client, "orders_order", "cancel_orders", [order])
    assert Order.objects.get(pk=order.pk).status == "cancelled"
    audited("order_cancelled_by_operator", actor=operator, target=order)

    balances = reverse("admin:orders_balance_changelist")
    listed = operator_client.get(balances, {"asset": "usd"}).context["cl"].result_list
    assert [(b.user_id, b.asset) for b in listed] == [(trader.pk, "usd")]
    assert operator_client.get(balances, {"asset": "bitcoin"}).context["cl"].result_count == 0


def test_permissions_added_later_reach_the_groups_after_migrate():
    coin_type = ContentType.objects.get_for_model(Coin)
    later = Permission.objects.create(codename="export_coin", name="x", content_type=coin_type)
    roles_on_post_migrate(sender=apps.get_app_config("markets"))
    assert Group.objects.get(name=ADMIN_GROUP).permissions.filter(pk=later.pk).exists()
    assert not Group.objects.get(name=OPERATOR_GROUP).permissions.filter(pk=later.pk).exists()


def test_dashboard_names_price_source_problems(operator_client):
    coins_and_prices({"bitcoin": "65000"})
    prices_record(
        prices={"bitcoin": Decimal(65000)},
        source="simulated",
        as_of=timezone.now() - timedelta(seconds=300),
    )
    get_redis_connection("default").set(BACKOFF_UNTIL_KEY, repr(time.time() + 42), ex=42)
    prices = operator_client.get(reverse("admin-dashboard")).context["prices"]
    assert prices["stale"] and prices["source"] == "simulated"
    assert 40 <= prices["rate_limited_seconds"] <= 42
    problems = " ".join(prices["problems"])
    assert "stale" in problems and "simulated" in problems and "429" in problems


def test_the_ledger_and_the_audit_log_are_read_only_even_for_admins(admin_client, admin_user):
    wallet_adjust(user=admin_user, asset="usd", amount=Decimal(5), reason="test")
    entry = LedgerEntry.objects.get(user=admin_user)
    event = AuditEvent.objects.filter(target_id=str(admin_user.pk)).first()
    for info, obj in (("orders_ledgerentry", entry), ("accounts_auditevent", event)):
        change = reverse(f"admin:{info}_change", args=[obj.pk])
        page = admin_client.get(change)
        assert page.status_code == 200
        assert page.context["has_change_permission"] is False
        assert admin_client.post(change, {"amount": "1000000"}).status_code == 403
        assert admin_client.get(reverse(f"admin:{info}_add")).status_code == 403
        delete = reverse(f"admin:{info}_delete", args=[obj.pk])
        assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert LedgerEntry.objects.get(pk=entry.pk).amount == Decimal(5)


def test_every_model_of_ours_has_an_admin():
    ours = ("accounts", "markets", "orders", "notifications", "django_celery_beat")
    internal = {"django_celery_beat.PeriodicTasks"}  # beat's own change marker
    missing = [
        model._meta.label
        for label in ours
        for model in apps.get_app_config(label).get_models()
        if not admin.site.is_registered(model) and model._meta.label not in internal
    ]
    assert missing == []
