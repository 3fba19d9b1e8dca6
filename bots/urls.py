from django.urls import path, re_path

from bots import apis

app_name = "binance"

urlpatterns = [
    path("api/v3/ping", apis.PingApi.as_view(), name="ping"),
    path("api/v3/time", apis.TimeApi.as_view(), name="time"),
    path("api/v3/exchangeInfo", apis.ExchangeInfoApi.as_view(), name="exchange-info"),
    path("api/v3/ticker/price", apis.TickerPriceApi.as_view(), name="ticker-price"),
    path("api/v3/ticker/24hr", apis.Ticker24hrApi.as_view(), name="ticker-24hr"),
    path("api/v3/ticker/bookTicker", apis.BookTickerApi.as_view(), name="book-ticker"),
    path("api/v3/avgPrice", apis.AvgPriceApi.as_view(), name="avg-price"),
    path("api/v3/depth", apis.DepthApi.as_view(), name="depth"),
    path("api/v3/klines", apis.KlinesApi.as_view(), name="klines"),
    path("api/v3/trades", apis.TradesApi.as_view(), name="trades"),
    path("api/v3/aggTrades", apis.AggTradesApi.as_view(), name="agg-trades"),
    path("api/v3/order", apis.OrderApi.as_view(), name="order"),
    path("api/v3/order/test", apis.OrderTestApi.as_view(), name="order-test"),
    path("api/v3/openOrders", apis.OpenOrdersApi.as_view(), name="open-orders"),
    path("api/v3/allOrders", apis.AllOrdersApi.as_view(), name="all-orders"),
    path("api/v3/account", apis.AccountApi.as_view(), name="account"),
    path("api/v3/myTrades", apis.MyTradesApi.as_view(), name="my-trades"),
    path("sapi/v1/margin/allPairs", apis.MarginPairsApi.as_view(), name="margin-pairs"),
    path(
        "sapi/v1/margin/isolated/allPairs",
        apis.MarginPairsApi.as_view(),
        name="margin-isolated-pairs",
    ),
    re_path(r"^", apis.UnknownEndpointApi.as_view(), name="unknown"),
]
