from django.urls import path

from markets import apis

urlpatterns = [
    path("coins", apis.CoinListApi.as_view(), name="coin-list"),
    path("coins/<str:coin_id>", apis.CoinDetailApi.as_view(), name="coin-detail"),
    path("coins/<str:coin_id>/history", apis.CoinHistoryApi.as_view(), name="coin-history"),
    path("coins/<str:coin_id>/ohlc", apis.CoinOhlcApi.as_view(), name="coin-ohlc"),
    path("prices", apis.prices, name="prices"),
    path("arbitrage", apis.ArbitrageApi.as_view(), name="arbitrage"),
]
