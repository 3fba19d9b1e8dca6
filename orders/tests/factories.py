import itertools
from decimal import Decimal

from django.utils import timezone

from accounts.models import User
from orders.models import USD
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
        wallet_adjust(user=user, asset=asset, amount=Decimal(str(amount)), reason="test funding")
    return user
