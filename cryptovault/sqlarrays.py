"""PostgreSQL array literals for set-based statements (``unnest(%s::bigint[], ...)``).

psycopg2 sends a Python list as ``ARRAY[v1, v2, ...]``: an expression per element that
the server parses, analyses and coerces one by one. A batch of thousands of rows is
cheaper sent as one array literal (``'{v1,v2,...}'``), which the type's input function
reads in a single pass: half the time of the statement for a batch of fills.
"""

from collections.abc import Iterable
from decimal import Decimal


def pg_array(values: Iterable[int | Decimal | None]) -> str:
    """The text of a PostgreSQL array of numbers (cast it in the SQL: ``%s::numeric[]``);
    None is NULL."""
    return "{" + ",".join(["NULL" if value is None else str(value) for value in values]) + "}"


def pg_text_array(values: Iterable[str | None]) -> str:
    """The text of a PostgreSQL array of strings (``%s::text[]``, ``%s::jsonb[]``): each
    quoted, ``"`` and ``\\`` escaped; None is NULL."""
    quoted = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    return "{" + ",".join(quoted) + "}"
