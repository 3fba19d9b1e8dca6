"""Drop the foreign keys' own indexes that a composite index leading with the same
column covers (every fill inserts into these tables). Only the indexes go: the foreign
keys stay as they are. Django's AlterField(db_index=False) would drop every index on
the bare column, the partial unique ``orders_ledger_one_signup_bonus`` too, and re-add
the foreign keys, so the database side is these DROP INDEX statements."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("markets", "0004_latestprice"),
        ("orders", "0002_fills_by_coin"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="order",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="ledger_entries",
                        to="orders.order",
                    ),
                ),
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="coin",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="markets.coin",
                    ),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orders_ledgerentry_order_id_cf4e9203"',
                    'CREATE INDEX IF NOT EXISTS "orders_ledgerentry_order_id_cf4e9203" ON "orders_ledgerentry" ("order_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orders_ledgerentry_user_id_99dd3b26"',
                    'CREATE INDEX IF NOT EXISTS "orders_ledgerentry_user_id_99dd3b26" ON "orders_ledgerentry" ("user_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orders_order_coin_id_9853aab5"',
                    'CREATE INDEX IF NOT EXISTS "orders_order_coin_id_9853aab5" ON "orders_order" ("coin_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orders_order_coin_id_9853aab5_like"',
                    'CREATE INDEX IF NOT EXISTS "orders_order_coin_id_9853aab5_like" ON "orders_order" ("coin_id" varchar_pattern_ops)',
                ),
                migrations.RunSQL(
                    'DROP INDEX IF EXISTS "orders_order_user_id_e9b59eb1"',
                    'CREATE INDEX IF NOT EXISTS "orders_order_user_id_e9b59eb1" ON "orders_order" ("user_id")',
                ),
            ],
        ),
    ]
