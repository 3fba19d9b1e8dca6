from django.urls import path

from cryptovault.routes import api_path
from markets import apis

urlpatterns = [
    api_path("coins", apis.CoinListApi, "coin-list"),
    api_path("coins/<str:coin_id>", apis.CoinDetailApi, "coin-detail"),
    api_path("coins/<str:coin_id>/history", apis.CoinHistoryApi, "coin-history"),
    api_path("coins/<str:coin_id>/ohlc", apis.CoinOhlcApi, "coin-ohlc"),
    path("prices", apis.prices, name="prices"),
    api_path("arbitrage", apis.ArbitrageApi, "arbitrage"),
]
