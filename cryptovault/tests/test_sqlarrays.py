"""The array literals of ``cryptovault.sqlarrays`` read back as the values they carry."""

from decimal import Decimal

import pytest
from django.db import connection

from cryptovault.sqlarrays import pg_array, pg_text_array

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        ["plain", "order_filled", "usd"],
        ['a "quoted" word', "back\\slash", "\\", '"', "{,}", "NULL", " spaced ", "é ✓"],
        ['{"k": "v \\" \\\\"}', "x"],
        ["with", None, "a null"],
        [None],
        [None, None, None],
    ],
)
def test_a_text_array_reads_back_as_its_values(values):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[]", [pg_text_array(values)])
        assert cursor.fetchone()[0] == values
    # One by one, as before the batch's fast path.
    quoted = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    assert pg_text_array(iter(values)) == "{" + ",".join(quoted) + "}"


def test_a_value_holding_a_nul_is_never_split():
    assert pg_text_array(["a\0b", "c"]) == '{"a\0b","c"}'


@pytest.mark.parametrize(
    "values",
    [
        [],
        [1, 2],
        [Decimal("0.00000001"), Decimal("-5.5"), Decimal("1E+3")],
        [1, None],
        [Decimal("1.5"), None, Decimal("0")],
        [None],
        [None, None],
    ],
)
def test_a_number_array_reads_back_as_its_values(values):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::numeric[]", [pg_array(iter(values))])
        assert cursor.fetchone()[0] == values
