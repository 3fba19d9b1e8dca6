from django.db import transaction

from markets.models import Coin

# Names for the default tracked coins, so a fresh install shows sensible rows
# before the first poll fills in whatever the source reports.
KNOWN_COINS: dict[str, tuple[str, str]] = {
    "bitcoin": ("btc", "Bitcoin"),
    "ethereum": ("eth", "Ethereum"),
    "tether": ("usdt", "Tether"),
    "binancecoin": ("bnb", "BNB"),
    "solana": ("sol", "Solana"),
    "ripple": ("xrp", "XRP"),
    "usd-coin": ("usdc", "USDC"),
    "cardano": ("ada", "Cardano"),
    "dogecoin": ("doge", "Dogecoin"),
    "tron": ("trx", "TRON"),
}


@transaction.atomic
def coins_seed(*, coin_ids: list[str]) -> list[Coin]:
    """Ensure a tracked row for each id; idempotent, never un-tracks anything."""
    coins = []
    for coin_id in coin_ids:
        symbol, name = KNOWN_COINS.get(coin_id, (coin_id[:32], coin_id.replace("-", " ").title()))
        coin, created = Coin.objects.get_or_create(
            id=coin_id, defaults={"symbol": symbol, "name": name, "tracked": True}
        )
        if not created and not coin.tracked:
            coin.tracked = True
            coin.save(update_fields=["tracked", "updated_at"])
        coins.append(coin)
    return coins
