"""What the benchmarks share: the price fixture and how they start a uvicorn server."""

import sys
from collections.abc import Sequence

# Ten coins at realistic levels, as decimal strings.
PRICES = {
    "bitcoin": "65000.12", "ethereum": "3200.5", "tether": "1.0001", "binancecoin": "580.3",
    "solana": "150.25", "ripple": "0.5512", "usd-coin": "0.9999", "cardano": "0.4501",
    "dogecoin": "0.15023", "tron": "0.1201",
}  # fmt: skip


def uvicorn_command(
    *,
    port: int,
    app: str = "cryptovault.asgi:application",
    workers: int = 1,
    fast: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """A quiet uvicorn on 127.0.0.1 (``fast``: uvloop + httptools, as wrk runs want)."""
    command = [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    if fast:
        command += ["--loop", "uvloop", "--http", "httptools"]
    return [*command, *extra]
