"""Operators: wallets (credit/debit through the ledger), orders (cancel), the ledger.

Nothing here writes money directly: every change goes through ``orders.services``
and is recorded in the audit log.
"""

import re
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from accounts.audit import audit_record
from cryptovault.admin import LargeTablePaginator, ReadOnlyAdmin
from cryptovault.decimals import decimal_str
from cryptovault.exceptions import ApplicationError
from markets.models import Coin
from orders import services
from orders.models import USD, Balance, LedgerEntry, Order


class WalletAdjustForm(forms.Form):
    email = forms.EmailField(help_text="The account to credit or debit.")
    asset = forms.CharField(max_length=100, initial="usd", help_text="usd or a coin id.")
    amount = forms.CharField(help_text="Positive credits, negative debits (e.g. 250 or -10.5).")
    reason = forms.CharField(max_length=200, help_text="Kept in the ledger memo and audit log.")

    def clean_email(self) -> object:
        user = get_user_model().objects.filter(email__iexact=self.cleaned_data["email"]).first()
        if user is None:
            raise forms.ValidationError("No account with this email.")
        return user

    def clean_amount(self) -> Decimal:
        # Plain decimals only, as in the API: no exponent ("1e3"), NaN or infinity.
        text = self.cleaned_data["amount"].strip()
        match = re.fullmatch(r"-?[0-9]+(?:\.([0-9]+))?", text)
        if match is None:
            raise forms.ValidationError("Enter a plain decimal number, like 250 or -10.5.")
        if len((match.group(1) or "").rstrip("0")) > 8:
            raise forms.ValidationError("At most 8 decimal places.")
        amount = Decimal(text)
        if amount == 0:
            raise forms.ValidationError("Enter a non-zero decimal number.")
        if abs(amount) > services.WALLET_ADJUST_MAX:
            limit = decimal_str(services.WALLET_ADJUST_MAX)
            raise forms.ValidationError(f"At most {limit} at a time, either way.")
        return amount


class AssetFilter(admin.SimpleListFilter):
    """usd and the coins, without a DISTINCT over every balance or ledger row."""

    title = "asset"
    parameter_name = "asset"

    def lookups(self, request, model_admin):
        coins = Coin.objects.order_by("id").values_list("id", flat=True)
        return [(USD, USD), *((coin, coin) for coin in coins)]

    def queryset(self, request, queryset):
        return queryset.filter(asset=self.value()) if self.value() else queryset


@admin.register(Balance)
class BalanceAdmin(ReadOnlyAdmin):
    list_display = ("user", "asset", "available", "locked", "updated_at")
    list_filter = (AssetFilter,)
    search_fields = ("user__email", "asset")
    list_select_related = ("user",)
    change_list_template = "admin/orders/balance/change_list.html"

    def get_urls(self):
        adjust = self.admin_site.admin_view(self.adjust_view)
        return [path("adjust/", adjust, name="orders_balance_adjust"), *super().get_urls()]

    def adjust_view(self, request):
        if not request.user.has_perm("orders.change_balance"):
            raise PermissionDenied
        form = WalletAdjustForm(request.POST or None, initial=request.GET or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                entry = services.wallet_adjust(
                    user=data["email"],
                    asset=data["asset"],
                    amount=data["amount"],
                    actor=request.user,
                    reason=data["reason"],
                )
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                audit_record(
                    action="wallet_adjusted",
                    actor=request.user,
                    target=data["email"],
                    request=request,
                    data={
                        "asset": entry.asset,
                        "amount": decimal_str(entry.amount),
                        "reason": data["reason"],
                        "ledger_entry": entry.pk,
                    },
                )
                amount, after = map(decimal_str, (entry.amount, entry.balance_after))
                self.message_user(
                    request,
                    f"{entry.kind}: {amount} {entry.asset} for {data['email']}; "
                    f"balance now {after}.",
                    messages.SUCCESS,
                )
                return redirect(reverse("admin:orders_balance_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Credit or debit a wallet",
            "form": form,
        }
        return TemplateResponse(request, "admin/orders/balance/adjust.html", context)


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = (
        "id", "user", "coin", "side", "type", "quantity", "limit_price", "status",
        "filled_price", "fee", "created_at",
    )  # fmt: skip
    list_filter = ("status", "side", "type", "coin")
    search_fields = ("user__email", "client_order_id", "=id")
    list_select_related = ("user", "coin")
    show_full_result_count = False
    paginator = LargeTablePaginator
    actions = ("cancel_orders",)

    def has_change_permission(self, request, obj=None) -> bool:
        # Needed for the cancel action. The change form stays view-only: saving it would
        # write back a row a fill may have changed meanwhile.
        return obj is None and request.user.has_perm("orders.change_order")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    @admin.action(description="Cancel selected pending/open orders", permissions=["change"])
    def cancel_orders(self, request, queryset):
        cancelled, skipped = 0, 0
        for order_id in queryset.values_list("id", flat=True):
            try:
                order = services.order_cancel(order_id=order_id)
            except ApplicationError:
                skipped += 1
                continue
            audit_record(
                action="order_cancelled_by_operator",
                actor=request.user,
                target=order,
                request=request,
                data={"user_id": order.user_id},
            )
            cancelled += 1
        self.message_user(
            request, f"Cancelled {cancelled} order(s); {skipped} were not pending or open."
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "kind", "asset", "amount", "balance_after", "order", "created_at")
    list_filter = ("kind", AssetFilter)
    search_fields = ("user__email", "memo", "=order__id")
    list_select_related = ("user", "order")
    show_full_result_count = False
    paginator = LargeTablePaginator
