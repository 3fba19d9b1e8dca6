"""Foreign keys checked once per statement, not once per row, where a fill inserts rows.

A fill inserts three ledger entries, a notification, its outbox row and two event rows:
eleven foreign-key references, each checked at commit by PostgreSQL's per-row trigger
(one ``SELECT .. FOR KEY SHARE`` of the parent per row), which was about half of
PostgreSQL's work per fill. These references (the ledger's here; notifications 0008
converts the notifications app's) are now checked by triggers that do the same, per
statement:

- insert into the child: after the statement, every parent its new rows name is locked
  ``FOR KEY SHARE`` in id order, by one static query (a function per reference, planned
  once per backend); one missing raises ``foreign_key_violation`` (an ``IntegrityError``),
  as the constraint did. The lock is the constraint's own: a
  concurrent delete of a parent waits for our commit, and one that committed first
  leaves the row unlockable, so the insert fails;
- update of the child's column to another value: checked per row at commit (rare);
- delete of a parent (or a change of its id): checked per row at commit, as ``NO
  ACTION`` does: the transaction fails if a child still names it. Django deletes the
  children first (its ``on_delete``), as before;
- ``TRUNCATE`` of a parent alone fails while the child has rows.

The difference from the constraint: an insert is checked at the end of its statement,
not at commit (a child can no longer be inserted before its parent in one transaction;
no code does); and the delete check, like all our transactions, relies on READ
COMMITTED (its query sees children committed while it waited for their lock).

Django keeps the relation (``ForeignKey(db_constraint=False)``): joins, ``on_delete``
and the admin are unchanged.
"""

from django.conf import settings
from django.db import migrations, models

from cryptovault.dbreferences import (
    DROP_FUNCTIONS,
    FUNCTIONS,
    reference_checked,
    reference_unconstrained,
)


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0005_post_order_place_function"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunSQL(FUNCTIONS, reverse_sql=DROP_FUNCTIONS),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                reference_unconstrained(
                    "ledgerentry", "order", to="orders.order", on_delete=models.PROTECT,
                    null=True, blank=True, related_name="ledger_entries", db_index=False,
                ),
                reference_unconstrained(
                    "ledgerentry", "user", to=settings.AUTH_USER_MODEL,
                    on_delete=models.CASCADE, db_index=False,
                ),
            ],  # fmt: skip
            database_operations=[
                reference_checked(
                    child="orders_ledgerentry",
                    column="order_id",
                    parent="orders_order",
                    name="ledger_order_ref",
                    constraint="orders_ledgerentry_order_id_cf4e9203_fk_orders_order_id",
                ),
                reference_checked(
                    child="orders_ledgerentry",
                    column="user_id",
                    parent="accounts_user",
                    name="ledger_user_ref",
                    constraint="orders_ledgerentry_user_id_99dd3b26_fk_accounts_user_id",
                ),
            ],
        ),
    ]
