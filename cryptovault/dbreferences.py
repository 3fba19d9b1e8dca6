"""Foreign keys checked once per statement (PostgreSQL triggers), for the tables a fill
inserts into; created by orders 0006 and notifications 0008, whose docstring explains.

Kept out of the migrations so that both use the same functions and triggers; a change
here must come with a migration that replaces what the database has."""

from typing import Any

from django.db import migrations, models

FUNCTIONS = r"""
CREATE FUNCTION cv_ref_missing(child text, column_name text, missing text, parent text, name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE foreign_key_violation USING
        MESSAGE = format('insert or update on table "%s" violates foreign key "%s"', child, name),
        DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
            column_name, missing, parent);
END
$$;

CREATE FUNCTION cv_ref_updated() RETURNS trigger LANGUAGE plpgsql AS $$
-- AFTER UPDATE OF <column> FOR EACH ROW (deferred), when the column changed to a value;
-- arguments: the child's column, the parent table, the reference's name.
DECLARE
    parent_id bigint;
    present boolean;
BEGIN
    parent_id := (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
    EXECUTE format('SELECT true FROM %I WHERE id = $1 FOR KEY SHARE', TG_ARGV[1])
        INTO present USING parent_id;
    IF present IS NULL THEN
        PERFORM cv_ref_missing(TG_TABLE_NAME, TG_ARGV[0], parent_id::text, TG_ARGV[1], TG_ARGV[2]);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION cv_ref_released() RETURNS trigger LANGUAGE plpgsql AS $$
-- On the parent, AFTER DELETE (or UPDATE OF id) FOR EACH ROW, deferred: NO ACTION.
-- Arguments: the child table, its column, the reference's name.
DECLARE
    referenced boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT FROM %I WHERE %I = $1)', TG_ARGV[0], TG_ARGV[1])
        INTO referenced USING OLD.id;
    IF referenced THEN
        RAISE foreign_key_violation USING
            MESSAGE = format(
                'update or delete on table "%s" violates foreign key "%s" on table "%s"',
                TG_TABLE_NAME, TG_ARGV[2], TG_ARGV[0]),
            DETAIL = format('Key (id)=(%s) is still referenced from table "%s".',
                OLD.id, TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION cv_ref_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
-- On the parent, AFTER TRUNCATE: the child must be empty (truncated with it).
-- Arguments: the child table, the reference's name.
DECLARE
    referenced boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT FROM %I)', TG_ARGV[0]) INTO referenced;
    IF referenced THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('cannot truncate table "%s" referenced by "%s" (foreign key "%s")',
                TG_TABLE_NAME, TG_ARGV[0], TG_ARGV[1]);
    END IF;
    RETURN NULL;
END
$$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION cv_ref_missing(text, text, text, text, text);
DROP FUNCTION cv_ref_updated();
DROP FUNCTION cv_ref_released();
DROP FUNCTION cv_ref_truncated();
"""


def reference_checked(
    *, child: str, column: str, parent: str, name: str, constraint: str
) -> migrations.RunSQL:
    """The operation that replaces ``constraint`` (a deferred foreign key of
    ``child.column`` to ``parent.id``) by the triggers named ``name``_*."""
    forward = f"""
ALTER TABLE {child} DROP CONSTRAINT {constraint};
CREATE FUNCTION {name}_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
-- AFTER INSERT .. FOR EACH STATEMENT: every parent the new rows name, locked FOR KEY SHARE
-- in id order, in one query; the first missing one raises. The SQL is static (no
-- arguments), so each backend plans it once: a one-row insert costs a few microseconds.
DECLARE
    missing text;
BEGIN
    SELECT min(n.parent_id)::text INTO missing
    FROM (SELECT DISTINCT {column} FROM new_rows WHERE {column} IS NOT NULL ORDER BY 1)
        AS n (parent_id)
    LEFT JOIN LATERAL (
        SELECT p.id FROM {parent} p WHERE p.id = n.parent_id FOR KEY SHARE OF p
    ) AS locked ON true
    WHERE locked.id IS NULL;
    IF missing IS NOT NULL THEN
        PERFORM cv_ref_missing(TG_TABLE_NAME, '{column}', missing, '{parent}', '{name}');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER {name}_ins AFTER INSERT ON {child} REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {name}_inserted();
CREATE CONSTRAINT TRIGGER {name}_upd AFTER UPDATE OF {column} ON {child}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.{column} IS DISTINCT FROM OLD.{column} AND NEW.{column} IS NOT NULL)
    EXECUTE FUNCTION cv_ref_updated('{column}', '{parent}', '{name}');
CREATE CONSTRAINT TRIGGER {name}_del AFTER DELETE ON {parent}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION cv_ref_released('{child}', '{column}', '{name}');
CREATE CONSTRAINT TRIGGER {name}_key AFTER UPDATE OF id ON {parent}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION cv_ref_released('{child}', '{column}', '{name}');
CREATE TRIGGER {name}_trunc AFTER TRUNCATE ON {parent}
    FOR EACH STATEMENT EXECUTE FUNCTION cv_ref_truncated('{child}', '{name}');
"""  # noqa: S608 - our table and column names, written in the migrations
    backward = f"""
DROP TRIGGER {name}_ins ON {child};
DROP FUNCTION {name}_inserted();
DROP TRIGGER {name}_upd ON {child};
DROP TRIGGER {name}_del ON {parent};
DROP TRIGGER {name}_key ON {parent};
DROP TRIGGER {name}_trunc ON {parent};
ALTER TABLE {child} ADD CONSTRAINT {constraint} FOREIGN KEY ({column})
    REFERENCES {parent} (id) DEFERRABLE INITIALLY DEFERRED;
"""
    return migrations.RunSQL(forward, reverse_sql=backward)


def reference_unconstrained(model_name: str, name: str, **field: Any) -> migrations.AlterField:
    """The state side: ``model_name.name`` a ``ForeignKey(db_constraint=False, **field)``."""
    return migrations.AlterField(
        model_name=model_name, name=name, field=models.ForeignKey(db_constraint=False, **field)
    )
