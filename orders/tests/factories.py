import itertools
from decimal import Decimal

from django.utils import timezone

from accounts.models import User
from orders.models import USD, Order
from orders.services import wallet_adjust

_seq = itertools.count(1)


def user_create(*, usd: Decimal | str | None = None, **assets: Decimal | str) -> User:
    """A verified user, optionally funded through the operator credit service."""
    user = User.objects.create_user(
        email=f"trader{next(_seq)}-{timezone.now().timestamp()}@example.com",
        password="correct horse battery staple",
        email_verified_at=timezone.now(),
    )
    funding = {USD: usd, **assets} if usd is not None else dict(assets)
    for asset, amount in funding.items():
        if Decimal(str(amount)) == 0:
            continue
        wallet_adjust(user=user, asset=asset, amount=Decimal(str(amount)), reason="test funding")
    return user


def coins_and_prices(
    prices: dict[str, str] | None = None, *, age_seconds: float = 0, source: str = "coingecko"
) -> None:
    """Track the coins and record their latest prices (``age_seconds`` old; negative is
    in the future) as a poll of ``source`` would."""
    from datetime import timedelta

    from markets.services import coins_seed, prices_record

    prices = prices or {"bitcoin": "65000", "ethereum": "3000"}
    coins_seed(coin_ids=list(prices))
    prices_record(
        prices={coin: Decimal(p) for coin, p in prices.items()},
        source=source,
        as_of=timezone.now() - timedelta(seconds=age_seconds),
    )


def limit_order_place(
    user: User, *, side: str = "buy", quantity: str, limit_price: str, coin_id: str = "bitcoin"
) -> Order:
    """A limit order placed through the service (reservation included), still pending."""
    from orders.services import order_place

    return order_place(
        user=user,
        coin_id=coin_id,
        side=side,
        type="limit",
        quantity=Decimal(quantity),
        limit_price=Decimal(limit_price),
    )[0]
