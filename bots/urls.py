from django.urls import include, path, re_path

from bots import apis

app_name = "binance"

# Binance's spot market and trading API.
spot_v3 = [
    path("ping", apis.PingApi.as_view(), name="ping"),
    path("time", apis.TimeApi.as_view(), name="time"),
    path("exchangeInfo", apis.ExchangeInfoApi.as_view(), name="exchange-info"),
    path("ticker/price", apis.TickerPriceApi.as_view(), name="ticker-price"),
    path("ticker/24hr", apis.Ticker24hrApi.as_view(), name="ticker-24hr"),
    path("ticker/bookTicker", apis.BookTickerApi.as_view(), name="book-ticker"),
    path("avgPrice", apis.AvgPriceApi.as_view(), name="avg-price"),
    path("depth", apis.DepthApi.as_view(), name="depth"),
    path("klines", apis.KlinesApi.as_view(), name="klines"),
    path("trades", apis.TradesApi.as_view(), name="trades"),
    path("aggTrades", apis.AggTradesApi.as_view(), name="agg-trades"),
    path("order", apis.OrderApi.as_view(), name="order"),
    path("order/test", apis.OrderTestApi.as_view(), name="order-test"),
    path("openOrders", apis.OpenOrdersApi.as_view(), name="open-orders"),
    path("allOrders", apis.AllOrdersApi.as_view(), name="all-orders"),
    path("account", apis.AccountApi.as_view(), name="account"),
    path("myTrades", apis.MyTradesApi.as_view(), name="my-trades"),
]

# The margin pair lists some clients read at start-up (no margin trading here).
margin_v1 = [
    path("allPairs", apis.MarginPairsApi.as_view(), name="margin-pairs"),
    path("isolated/allPairs", apis.MarginPairsApi.as_view(), name="margin-isolated-pairs"),
]

urlpatterns = [
    path("api/v3/", include(spot_v3)),
    path("sapi/v1/margin/", include(margin_v1)),
    re_path(r"^", apis.UnknownEndpointApi.as_view(), name="unknown"),
]
