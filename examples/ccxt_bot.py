"""Buy the dip, sell on a target: a small ccxt bot paper-trading on CryptoVault through
its Binance-compatible API, unchanged ccxt code but for the URLs.

    CV_URL=http://127.0.0.1:8000 CV_API_KEY=... CV_API_SECRET=... \\
        .venv/bin/python examples/ccxt_bot.py --symbol BTC/USD --dip 0.5 --target 1 --cost 100

Every ``--every`` seconds it reads the last price. With no position and no open sell,
a price ``--dip`` % under the highest seen since the bot started (or since its last
sale) buys ``--cost`` usd worth at market, then rests a limit sell ``--target`` % above
the fill. When that sell has filled, it looks for the next dip. ``CV_API_SECRET`` is the
key's HMAC secret, or an Ed25519 private key in PEM (for a key created with its public
key). ``--once`` runs one step and exits.
"""

import argparse
import os
import sys
import time

import ccxt


def exchange_connect(base_url: str, key: str, secret: str) -> ccxt.binance:
    api = f"{base_url.rstrip('/')}/binance/api/v3"
    exchange = ccxt.binance(
        {
            "apiKey": key,
            "secret": secret,
            "urls": {"api": {"public": api, "private": api}},
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
            },
        }
    )
    exchange.load_markets()
    return exchange


def step(exchange: ccxt.binance, args: argparse.Namespace, state: dict) -> None:
    last = exchange.fetch_ticker(args.symbol)["last"]
    state["high"] = max(state.get("high") or last, last)
    sells = [o for o in exchange.fetch_open_orders(args.symbol) if o["side"] == "sell"]
    if sells:
        print(f"{args.symbol} {last}: waiting for the sell at {sells[0]['price']}")
        return
    if state.pop("selling", False):
        print(f"{args.symbol} {last}: target reached, sold; watching for the next dip")
        state["high"] = last
    trigger = state["high"] * (1 - args.dip / 100)
    if last > trigger:
        print(f"{args.symbol} {last}: high {state['high']}, buying at or under {trigger:.2f}")
        return
    amount = exchange.amount_to_precision(args.symbol, args.cost / last)
    bought = exchange.create_order(args.symbol, "market", "buy", amount)
    if bought["status"] != "closed":
        print(f"bought order {bought['id']} is {bought['status']}; retrying next step")
        return
    target = exchange.price_to_precision(args.symbol, bought["average"] * (1 + args.target / 100))
    sell = exchange.create_order(args.symbol, "limit", "sell", bought["filled"], target)
    state["selling"] = True
    print(
        f"bought {bought['filled']} at {bought['average']} (fee {bought['fee']}); "
        f"selling at {target} (order {sell['id']})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbol", default="BTC/USD")
    parser.add_argument("--dip", type=float, default=0.5, help="percent under the high")
    parser.add_argument("--target", type=float, default=1.0, help="percent over the buy")
    parser.add_argument("--cost", type=float, default=100.0, help="usd per buy")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between steps")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args()
    exchange = exchange_connect(
        os.environ.get("CV_URL", "http://127.0.0.1:8000"),
        os.environ["CV_API_KEY"],
        os.environ["CV_API_SECRET"],
    )
    usd = exchange.fetch_balance().get("USD", {})
    print(f"connected: {usd.get('free', 0)} usd free")
    state: dict = {}
    while True:
        try:
            step(exchange, args, state)
        except ccxt.NetworkError as exc:  # ExchangeNotAvailable (503) included
            print(f"platform unavailable ({exc}); retrying")
        except ccxt.InsufficientFunds:
            print("not enough usd for the next buy; stopping")
            return 1
        if args.once:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
