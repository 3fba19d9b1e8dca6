"""The coin and venue catalogue: the one list of the coins the platform knows by name.

Everything that names coins reads it: the default ``TRACKED_COINS`` (settings), the rows
``coins_seed`` creates before the first poll names them, and the simulator's market.
Plain data without Django, so the settings and the standalone simulator can import it.
"""

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class CatalogueCoin:
    id: str  # the CoinGecko id
    symbol: str
    name: str
    # The simulator's market around this coin: a realistic usd level and supply.
    usd: float
    circulating_supply: float
    max_supply: float | None
    genesis_date: str | None
    stablecoin: bool = False
    # Among the coins a fresh install tracks (``TRACKED_COINS`` default).
    tracked: bool = False


def _coins(*coins: CatalogueCoin) -> dict[str, CatalogueCoin]:
    return {coin.id: coin for coin in coins}


# fmt: off
COINS: dict[str, CatalogueCoin] = _coins(
    CatalogueCoin("bitcoin", "btc", "Bitcoin", 65000.0, 19_790_000, 21_000_000, "2009-01-03", tracked=True),  # noqa: E501
    CatalogueCoin("ethereum", "eth", "Ethereum", 3200.0, 120_300_000, None, "2015-07-30", tracked=True),  # noqa: E501
    CatalogueCoin("tether", "usdt", "Tether", 1.0, 120_000_000_000, None, None, stablecoin=True, tracked=True),  # noqa: E501
    CatalogueCoin("binancecoin", "bnb", "BNB", 580.0, 145_900_000, 200_000_000, "2017-07-08", tracked=True),  # noqa: E501
    CatalogueCoin("solana", "sol", "Solana", 150.0, 470_000_000, None, "2020-03-16", tracked=True),
    CatalogueCoin("ripple", "xrp", "XRP", 0.55, 56_000_000_000, 100_000_000_000, None, tracked=True),  # noqa: E501
    CatalogueCoin("usd-coin", "usdc", "USDC", 1.0, 35_000_000_000, None, None, stablecoin=True, tracked=True),  # noqa: E501
    CatalogueCoin("cardano", "ada", "Cardano", 0.45, 35_500_000_000, 45_000_000_000, "2017-09-23", tracked=True),  # noqa: E501
    CatalogueCoin("dogecoin", "doge", "Dogecoin", 0.15, 146_000_000_000, None, "2013-12-08", tracked=True),  # noqa: E501
    CatalogueCoin("tron", "trx", "TRON", 0.12, 87_000_000_000, None, "2017-09-13", tracked=True),
    CatalogueCoin("litecoin", "ltc", "Litecoin", 80.0, 75_000_000, 84_000_000, "2011-10-07"),
    CatalogueCoin("polkadot", "dot", "Polkadot", 6.5, 1_450_000_000, None, "2020-05-26"),
    CatalogueCoin("chainlink", "link", "Chainlink", 14.0, 608_000_000, 1_000_000_000, "2017-09-19"),  # noqa: E501
    CatalogueCoin("avalanche-2", "avax", "Avalanche", 30.0, 395_000_000, 720_000_000, "2020-09-21"),  # noqa: E501
    CatalogueCoin("shiba-inu", "shib", "Shiba Inu", 0.000018, 589_000_000_000_000, None, "2020-08-01"),  # noqa: E501
    CatalogueCoin("stellar", "xlm", "Stellar", 0.11, 29_000_000_000, 50_001_806_812, "2014-07-31"),  # noqa: E501
    CatalogueCoin("monero", "xmr", "Monero", 160.0, 18_400_000, None, "2014-04-18"),
    CatalogueCoin("bitcoin-cash", "bch", "Bitcoin Cash", 380.0, 19_700_000, 21_000_000, "2017-08-01"),  # noqa: E501
    CatalogueCoin("uniswap", "uni", "Uniswap", 8.0, 600_000_000, 1_000_000_000, "2020-09-17"),
    CatalogueCoin("near", "near", "NEAR Protocol", 5.0, 1_100_000_000, None, "2020-04-22"),
)
# fmt: on

DEFAULT_TRACKED_COINS: list[str] = [coin.id for coin in COINS.values() if coin.tracked]


def coin_names(coin_id: str) -> tuple[str, str]:
    """``(symbol, name)`` of a coin: the catalogue's, else made up from the id until the
    source names it."""
    coin = COINS.get(coin_id)
    if coin is not None:
        return coin.symbol, coin.name
    return coin_id[:32], coin_id.replace("-", " ").title()


@dataclass(frozen=True, slots=True)
class Venue:
    id: str  # the CoinGecko exchange id
    name: str
    taker_fee: Decimal


VENUES: dict[str, Venue] = {
    venue.id: venue
    for venue in (
        Venue("binance", "Binance", Decimal("0.001")),
        Venue("gdax", "Coinbase Exchange", Decimal("0.004")),
        Venue("kraken", "Kraken", Decimal("0.0026")),
        Venue("bitstamp", "Bitstamp", Decimal("0.003")),
        Venue("okex", "OKX", Decimal("0.001")),
    )
}
# What a venue outside the table charges (``ARBITRAGE_DEFAULT_FEE``'s default).
DEFAULT_VENUE_FEE = Decimal("0.002")
