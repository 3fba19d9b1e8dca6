from django.urls import path

from orders import apis

urlpatterns = [
    path("orders", apis.OrderListCreateApi.as_view(), name="orders"),
    path("orders/<int:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("portfolio", apis.PortfolioApi.as_view(), name="portfolio"),
    path("transactions", apis.TransactionListApi.as_view(), name="transactions"),
]
