"""An order's placement in one call: ``orders_order_place`` reserves the funds, inserts
the order and logs its ``order`` frame in the user's event log, where it took two
(``orders_order_insert_reserving``, which this replaces, and
``notifications_events_record``). One statement needs no transaction of its own, so a
placement is one round trip to PostgreSQL instead of four (``BEGIN``, the two calls,
``COMMIT``).

The reservation is 0004's, unchanged: the balance row is locked only if the coin is
tracked and the row holds what the order requires; no row returned, nothing written.
The event is ``notifications_events_record``'s for one user and one frame, in its lock
order (the balance row, then the user's row ``FOR KEY SHARE``, then the counter). The
frame's text is the caller's, in pieces around what only the INSERT knows: the order's
id and its timestamps (``created_at`` = ``updated_at``, taken once the balance lock is
held), shown as the API shows a datetime (``orders_api_datetime``)."""

from importlib import import_module

from django.db import migrations

# The reservation and the INSERT (its fragments), and what the reverse puts back.
_0004 = import_module("orders.migrations.0004_order_insert_reserving_function")

# A datetime as the API shows it (DRF's ISO 8601 in UTC, as ``datetime.isoformat`` with
# ``Z``): seconds always, microseconds only when there are any.
API_DATETIME = """
CREATE FUNCTION orders_api_datetime(at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
    || CASE WHEN to_char(at AT TIME ZONE 'UTC', 'US') = '000000' THEN ''
        ELSE to_char(at AT TIME ZONE 'UTC', '.US') END || 'Z'
$$
"""

ORDER_PLACE = (
    """
CREATE FUNCTION orders_order_place(
    owner bigint, reserved_asset varchar, required numeric, cap numeric, coin varchar,
    client_order_id varchar, side varchar, type varchar, quantity numeric,
    limit_price numeric, status varchar, frame_parts text[]
) RETURNS TABLE (id bigint, reserved_amount numeric, created_at timestamptz, frame text)
LANGUAGE plpgsql AS $$
DECLARE
    balance_id bigint;
    reserve numeric;
    at timestamptz;
    at_text text;
    order_id bigint;
    event_id bigint;
BEGIN"""
    + _0004.RESERVE
    + _0004.INSERT_ORDER
    + """ RETURNING o.id INTO order_id;
    PERFORM FROM accounts_user u WHERE u.id = owner FOR KEY SHARE;
    INSERT INTO notifications_usereventcounter AS c (user_id, last_id) VALUES (owner, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_id = c.last_id + 1
    RETURNING c.last_id INTO event_id;
    at_text := orders_api_datetime(at);
    frame := '{"id":' || event_id || ',' || frame_parts[1] || order_id || frame_parts[2]
        || at_text || frame_parts[3] || at_text || frame_parts[4];
    INSERT INTO notifications_userevent (user_id, event_id, kind, frame, created_at)
    VALUES (owner, event_id, 'order', frame, at);
    id := order_id;
    reserved_amount := reserve;
    created_at := at;
    RETURN NEXT;
END
$$
"""
)


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0004_order_insert_reserving_function"),
        ("notifications", "0007_events_record_function"),
    ]

    operations = [
        migrations.RunSQL(API_DATETIME, reverse_sql="DROP FUNCTION orders_api_datetime"),
        migrations.RunSQL(ORDER_PLACE, reverse_sql="DROP FUNCTION orders_order_place"),
        migrations.RunSQL(
            "DROP FUNCTION orders_order_insert_reserving",
            reverse_sql=_0004.ORDER_INSERT_RESERVING,
        ),
    ]
