"""Admin building blocks shared by every app's ``admin.py``, and the project's own
registrations: other packages' models (django.contrib.auth's groups, django-celery-beat's
periodic tasks and schedules) re-registered with the audit trail. (``cryptovault`` is an
installed app for this: its ``admin`` module is autodiscovered after theirs.)

Every change an operator makes from the admin lands in the audit log
(``accounts.AuditEvent``) with who, what and when, next to Django's own admin log:
form saves and deletions through :class:`AuditedAdmin`, actions by calling services
that audit, or :func:`admin_audit` for actions that have no service of their own.
"""

import functools

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from cryptovault.exceptions import ApplicationError, error_response
from cryptovault.ratelimit import rate_limit

# Enough to identify a hand-picked selection; "select all" on a big list is summarised.
AUDITED_IDS = 100


# Like the API's login: the admin login is a password form too.
ADMIN_LOGIN_RATE = "10/m"


# Whoever may create a periodic task may define any (task, arguments, queue, schedule),
# so that is the permission that guards editing those fields of an existing one.
PERIODIC_TASK_EDITOR_PERMISSION = "django_celery_beat.add_periodictask"


def admin_audit(request, *, action: str, target=None, data: dict | None = None) -> None:
    # Upward call: the audit log is accounts' model, and accounts.admin builds on this
    # module (a module-level import would cycle cryptovault <-> accounts).
    from accounts.audit import audit_record

    audit_record(action=action, actor=request.user, target=target, request=request, data=data)


def _changes(message) -> list | str:
    # Django passes a JSON-able list of {"added"/"changed"/"deleted": ...} or a string.
    return message if isinstance(message, list | str) else str(message)


class AuditedAdmin(admin.ModelAdmin):
    """Mirrors the admin's add/change/delete log into the audit log, and records every
    action run (which action, on which objects) before it runs."""

    def get_action(self, action):
        found = super().get_action(action)
        if found is None:
            return None
        func, name, description = found

        @functools.wraps(func)  # keeps allowed_permissions and the description
        def audited(modeladmin, request, queryset):
            ids = [str(pk) for pk in queryset.values_list("pk", flat=True)[:AUDITED_IDS]]
            admin_audit(
                request,
                action="admin_action",
                target=f"{name} on {self.opts.verbose_name_plural}",
                data={"model": self.opts.label_lower, "action": name, "ids": ids},
            )
            return func(modeladmin, request, queryset)

        return audited, name, description

    def _form_audit(self, request, obj, message, *, action: str) -> None:
        data = {"model": obj._meta.label_lower, "changes": _changes(message)}
        admin_audit(request, action=action, target=obj, data=data)

    def log_addition(self, request, obj, message):
        self._form_audit(request, obj, message, action="admin_added")
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._form_audit(request, obj, message, action="admin_changed")
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            admin_audit(
                request,
                action="admin_deleted",
                target=obj,
                data={"model": obj._meta.label_lower},
            )
        return super().log_deletions(request, queryset)


class LargeTablePaginator(Paginator):
    """The unfiltered list of a big table (price history, the ledger, the audit log) shows
    PostgreSQL's row estimate instead of a COUNT(*) that reads the whole table; filtered
    lists and small tables are counted exactly."""

    EXACT_UP_TO = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            with connections[queryset.db].cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [queryset.model._meta.db_table],
                )
                estimate = cursor.fetchone()[0]
            if estimate > self.EXACT_UP_TO:  # -1 when the table was never analysed
                return estimate
        return super().count


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records nobody edits by hand: they come from services (the ledger, the audit log)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class RecordAdmin(admin.ModelAdmin):
    """Rows the platform writes (polls, samplers, the event log): operators look and may
    delete, nobody adds or edits."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class LargeRecordAdmin(RecordAdmin):
    """Records of a table that grows without bound (price history, the event log): an
    estimated count when unfiltered, and no full count beside a filtered one."""

    paginator = LargeTablePaginator
    show_full_result_count = False


def admin_login(request, extra_context=None):
    """The admin's login page, rate limited per client address; its form
    (accounts.admin.AdminLoginForm) applies the per-account lockout and audits."""
    if request.method == "POST":
        try:
            rate_limit(request, group="admin-login", rate=ADMIN_LOGIN_RATE)
        except ApplicationError as exc:  # over the limit (429)
            return error_response(exc.status_code, exc.message, exc.code, headers=exc.headers)
    return admin.site.login(request, extra_context)


class OperatorPeriodicTaskForm(forms.ModelForm):
    """What operators may change on a periodic task. A plain form: the beat form requires
    a task name, which operators neither see as a field nor send."""

    class Meta:
        model = PeriodicTask
        fields = ("enabled", "description")


class PeriodicTaskAdmin(AuditedAdmin, beat_admin.PeriodicTaskAdmin):
    """Operators switch periodic tasks on and off (the form or the enable/disable/toggle
    actions) and may annotate them; everything else is read-only to them. Only who may
    create a task (``PERIODIC_TASK_EDITOR_PERMISSION``: admins) edits what a task runs,
    with which arguments, on which queue and schedule."""

    OPERATOR_FIELDS = OperatorPeriodicTaskForm.Meta.fields

    def _edits_definition(self, request) -> bool:
        return request.user.has_perm(PERIODIC_TASK_EDITOR_PERMISSION)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if self._edits_definition(request):
            return fieldsets
        # "regtask" is the form's picker for "task", not a value to show: "task" says it.
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f != "regtask"]})
            for name, options in fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        if self._edits_definition(request):
            return super().get_readonly_fields(request, obj)
        return [
            field
            for _, options in self.get_fieldsets(request, obj)
            for field in options["fields"]
            if field not in self.OPERATOR_FIELDS
        ]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if not self._edits_definition(request):
            # Read-only fields are left out of the form, so a POST that sends them anyway
            # (args, kwargs, task, queue, schedule...) changes nothing.
            kwargs["form"] = OperatorPeriodicTaskForm
        return super().get_form(request, obj, change=change, **kwargs)


# Periodic tasks, schedules and groups come from other apps' admins; re-registered with
# the audit trail.
admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, PeriodicTaskAdmin)
for _model, _base in (
    (Group, GroupAdmin),
    (IntervalSchedule, beat_admin.IntervalScheduleAdmin),
    (CrontabSchedule, beat_admin.CrontabScheduleAdmin),
    (SolarSchedule, beat_admin.SolarScheduleAdmin),
    (ClockedSchedule, beat_admin.ClockedScheduleAdmin),
):
    admin.site.unregister(_model)
    admin.site.register(_model, type(_base.__name__, (AuditedAdmin, _base), {}))
