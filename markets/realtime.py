"""The realtime hand-off of each price tick (owned by the realtime issue).

``markets.services.prices_on_tick`` calls ``prices_tick_publish`` after every
successful write of prices to Redis. It must stay cheap (a channel-layer
``group_send`` or an enqueue), because it runs inside the poll task.
"""


def prices_tick_publish(*, as_of: str, prices: dict) -> None:
    """Push a ``{"type": "tick", "as_of", "prices"}`` frame to ``/ws/prices`` subscribers.

    ``as_of`` is the ISO-8601 string and ``prices`` the ``{coin: {"usd", "change_24h_pct"}}``
    entries, both exactly as in ``GET /api/v1/prices`` (``prices_snapshot()``).
    Left as a no-op hook until the realtime issue fills it in.
    """
