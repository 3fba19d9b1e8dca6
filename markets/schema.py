"""OpenAPI for ``GET /api/v1/prices``, a plain async view that drf-spectacular cannot see."""

# Named components, so a generated client calls its models ``Prices`` and ``PriceQuote``.
PRICE_QUOTE = {
    "type": "object",
    "properties": {
        "usd": {"type": "string", "format": "decimal", "example": "65000.12"},
        "change_24h_pct": {"type": "string", "format": "decimal", "nullable": True},
    },
    "required": ["usd", "change_24h_pct"],
}

PRICES = {
    "type": "object",
    "properties": {
        "as_of": {"type": "string", "format": "date-time", "nullable": True},
        "source": {"type": "string", "enum": ["coingecko", "simulated"], "nullable": True},
        "stale": {"type": "boolean"},
        "prices": {
            "type": "object",
            "additionalProperties": {"$ref": "#/components/schemas/PriceQuote"},
        },
    },
    "required": ["as_of", "source", "stale", "prices"],
}

PRICES_OPERATION = {
    "operationId": "prices_retrieve",
    "summary": "Latest prices of the tracked coins, from Redis",
    "tags": ["prices"],
    "security": [{}],
    "responses": {
        "200": {
            "description": "The latest poll (``source`` and ``as_of`` are null before the first).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prices"}}},
        },
        "503": {"description": "Redis is unreachable (`code: service_unavailable`)."},
    },
}


def prices_operation_add(result, generator, request, public):
    """drf-spectacular postprocessing hook: document ``GET /api/v1/prices``."""
    result["paths"]["/api/v1/prices"] = {"get": PRICES_OPERATION}
    result["components"]["schemas"].update(Prices=PRICES, PriceQuote=PRICE_QUOTE)
    return result
