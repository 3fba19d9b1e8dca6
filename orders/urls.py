from cryptovault.routes import api_path
from orders import apis

urlpatterns = [
    api_path("orders", apis.OrderListCreateApi, "orders"),
    api_path("orders/<int:order_id>", apis.OrderDetailApi, "order-detail"),
    api_path("orders/<int:order_id>/cancel", apis.OrderCancelApi, "order-cancel"),
    api_path("portfolio", apis.PortfolioApi, "portfolio"),
    api_path("transactions", apis.TransactionListApi, "transactions"),
]
