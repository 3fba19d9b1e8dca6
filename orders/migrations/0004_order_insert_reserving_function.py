"""``_order_insert_reserving`` as a PL/pgSQL function: each backend plans its statements
once and reuses the plans (PL/pgSQL's plan cache), where the same statement sent as text
is parsed and planned on every order. A function works through PgBouncer's transaction
pooling, which SQL ``PREPARE`` (per server connection) does not.

The balance row is locked (FOR UPDATE re-reads it after any concurrent writer commits)
only if the coin is tracked and the row holds what the order requires; then the
reservation and the INSERT. No row returned: nothing written. The timestamps are taken
once the lock is held, as the ORM's save would take them."""

from django.db import migrations

# The reservation (0005's ``orders_order_place`` starts the same way): the balance row
# locked and reserved from, or nothing done and nothing returned.
RESERVE = """
    SELECT b.id, LEAST(b.available, cap) INTO balance_id, reserve
    FROM orders_balance b
    WHERE b.user_id = owner AND b.asset = reserved_asset
        AND b.available >= required
        AND EXISTS (SELECT FROM markets_coin WHERE markets_coin.id = coin AND tracked)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    at := clock_timestamp();
    UPDATE orders_balance
    SET available = available - reserve, locked = locked + reserve, updated_at = at
    WHERE orders_balance.id = balance_id;
"""

# The order's INSERT, without its RETURNING clause.
INSERT_ORDER = """
    INSERT INTO orders_order AS o (
        user_id, client_order_id, coin_id, side, type, quantity, limit_price, status,
        reserved_asset, reserved_amount, created_at, updated_at
    ) VALUES (
        owner, client_order_id, coin, side, type, quantity, limit_price, status,
        reserved_asset, reserve, at, at
    )"""

ORDER_INSERT_RESERVING = (
    """
CREATE FUNCTION orders_order_insert_reserving(
    owner bigint, reserved_asset varchar, required numeric, cap numeric, coin varchar,
    client_order_id varchar, side varchar, type varchar, quantity numeric,
    limit_price numeric, status varchar
) RETURNS TABLE (id bigint, reserved_amount numeric, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    balance_id bigint;
    reserve numeric;
    at timestamptz;
BEGIN"""
    + RESERVE
    + "    RETURN QUERY"
    + INSERT_ORDER
    + """ RETURNING o.id, o.reserved_amount, o.created_at;
END
$$
"""
)


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0003_fk_indexes_covered"),
    ]

    operations = [
        migrations.RunSQL(
            ORDER_INSERT_RESERVING,
            reverse_sql="DROP FUNCTION orders_order_insert_reserving",
        ),
    ]
