from cryptovault.routes import api_path
from orders import apis

# Orders: place and list, one order, cancel it.
order_routes = [
    api_path("orders", apis.OrderListCreateApi, "orders"),
    api_path("orders/<int:order_id>", apis.OrderDetailApi, "order-detail"),
    api_path("orders/<int:order_id>/cancel", apis.OrderCancelApi, "order-cancel"),
]
# The paper wallet the orders move: its balances and its ledger.
wallet_routes = [
    api_path("portfolio", apis.PortfolioApi, "portfolio"),
    api_path("transactions", apis.TransactionListApi, "transactions"),
]
urlpatterns = order_routes + wallet_routes
