"""PostgreSQL array literals for set-based statements (``unnest(%s::bigint[], ...)``).

psycopg2 sends a Python list as ``ARRAY[v1, v2, ...]``: an expression per element that
the server parses, analyses and coerces one by one. A batch of thousands of rows is
cheaper sent as one array literal (``'{v1,v2,...}'``), which the type's input function
reads in a single pass: half the time of the statement for a batch of fills.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, models

# The column types whose arrays are of strings (``pg_text_array``); others are numbers.
TEXT_TYPES = frozenset({"text", "varchar", "jsonb"})


def pg_array(values: Iterable[int | Decimal | None]) -> str:
    """The text of a PostgreSQL array of numbers (cast it in the SQL: ``%s::numeric[]``);
    None is NULL."""
    values = list(values)
    texts = list(map(str, values))
    # Looked for among the texts (no number's is "None"): ``None in values`` compares
    # each Decimal to None, which goes through the numbers ABCs (~0.2 us a value).
    if "None" in texts:
        texts = ["NULL" if value is None else str(value) for value in values]
    return "{" + ",".join(texts) + "}"


def pg_text_array(values: Iterable[str | None]) -> str:
    """The text of a PostgreSQL array of strings (``%s::text[]``, ``%s::jsonb[]``): each
    quoted, ``"`` and ``\\`` escaped; None is NULL."""
    values = list(values)
    if values and values.count(None) == len(values):
        # A column the batch leaves NULL (an order's reject reason when it fills).
        return "{" + ",".join(["NULL"] * len(values)) + "}"
    if values and None not in values:
        # Escaped all at once (a batch's thousands of values cost two replaces of one
        # string, not two each), joined by a NUL, which no value holds (PostgreSQL's text
        # never does; one that did is quoted one by one below, and refused).
        joined = "\0".join(values)  # type: ignore[arg-type]
        if joined.count("\0") == len(values) - 1:
            escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
            return '{"' + escaped.replace("\0", '","') + '"}'
    quoted = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    return "{" + ",".join(quoted) + "}"


def rows_update(
    model: type[models.Model],
    rows: Sequence[Any],
    *,
    columns: dict[str, str],
    updated_at: datetime,
) -> None:
    """Write ``columns`` (name: PostgreSQL type) and ``updated_at`` of ``rows`` (objects
    with an ``id`` and an attribute per column) to ``model``'s table in one
    ``UPDATE .. FROM unnest(..)``."""
    arrays = [
        (pg_text_array if sql_type in TEXT_TYPES else pg_array)(getattr(row, name) for row in rows)
        for name, sql_type in columns.items()
    ]
    names = ", ".join(columns)
    sets = ", ".join(f"{name} = v.{name}" for name in columns)
    casts = ", ".join(f"%s::{sql_type}[]" for sql_type in columns.values())
    with connection.cursor() as cursor:
        cursor.execute(
            # Identifiers and types are ours (a model's table, its column names), never input.
            f"UPDATE {model._meta.db_table} AS t SET {sets}, updated_at = %s"  # noqa: S608
            f" FROM unnest(%s::bigint[], {casts}) AS v(id, {names}) WHERE t.id = v.id",
            [updated_at, pg_array(row.id for row in rows), *arrays],
        )
