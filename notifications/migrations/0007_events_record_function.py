"""``events_record`` as a PL/pgSQL function: each backend plans its statements once and
reuses the plans (PL/pgSQL's plan cache), where the same statement sent as text is
parsed and planned on every call. A function works through PgBouncer's transaction
pooling, which SQL ``PREPARE`` (per server connection) does not.

The body is what ``notifications.events`` explains: the users' rows locked FOR KEY SHARE
first, then the counters upserted, both in user id order, then the frames inserted with
their ids; returns each user's new last id."""

from django.db import migrations

EVENTS_RECORD = """
CREATE FUNCTION notifications_events_record(
    user_ids bigint[], counts bigint[], logged_at timestamptz,
    frame_users bigint[], backs bigint[], kinds varchar[], tails text[]
) RETURNS TABLE (user_id bigint, last_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM FROM accounts_user WHERE id = ANY(user_ids) ORDER BY id FOR KEY SHARE;
    RETURN QUERY
    WITH counters AS (
        INSERT INTO notifications_usereventcounter AS c (user_id, last_id)
        SELECT * FROM unnest(user_ids, counts) ORDER BY 1
        ON CONFLICT (user_id) DO UPDATE SET last_id = c.last_id + EXCLUDED.last_id
        RETURNING c.user_id, c.last_id
    ), logged AS (
        INSERT INTO notifications_userevent (user_id, event_id, kind, frame, created_at)
        SELECT f.user_id, c.last_id - f.back, f.kind,
            '{"id":' || (c.last_id - f.back) || ',' || f.tail, logged_at
        FROM unnest(frame_users, backs, kinds, tails) AS f (user_id, back, kind, tail)
        JOIN counters c USING (user_id)
    )
    SELECT c.user_id, c.last_id FROM counters c;
END
$$
"""


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0006_fk_indexes_covered"),
    ]

    operations = [
        migrations.RunSQL(
            EVENTS_RECORD,
            reverse_sql="DROP FUNCTION notifications_events_record",
        ),
    ]
