"""The pages the links in our emails open when no frontend does (``APP_URL`` is the
platform itself): ``/verify-email?token=`` and ``/reset-password?token=``.

A GET only shows a form and changes nothing, because mail scanners and link previews
fetch every link in an email; the POST (CSRF-protected, as every form) completes the flow
through the same services, and the same rate limits, as the JSON API."""

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts import selectors, services
from cryptovault.exceptions import ApplicationError
from cryptovault.ratelimit import rate_limit

# As the API's serializers: no token the platform issues is longer.
TOKEN_MAX_LENGTH = 128
_INVALID_LINK = "This link is invalid or has expired."


class _TokenField(forms.CharField):
    widget = forms.HiddenInput

    def __init__(self, **kwargs):
        super().__init__(
            max_length=TOKEN_MAX_LENGTH, error_messages={"max_length": _INVALID_LINK}, **kwargs
        )


class VerifyEmailForm(forms.Form):
    token = _TokenField(required=False)
    email = forms.EmailField(max_length=254, required=False, label="Email address")
    code = forms.RegexField(
        regex=r"^\d{6}\Z",
        required=False,
        label="Verification code",
        error_messages={"invalid": "Enter the 6-digit code."},
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "one-time-code"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("token"):
            for field in ("email", "code"):
                if not data.get(field) and field not in self.errors:
                    self.add_error(field, "This field is required.")
        return data


class ResetPasswordForm(forms.Form):
    token = _TokenField()
    new_password = forms.CharField(
        max_length=256,
        strip=False,
        label="New password",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    new_password_again = forms.CharField(
        max_length=256,
        strip=False,
        label="New password, again",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("new_password") != data.get("new_password_again"):
            self.add_error("new_password_again", "The two passwords differ.")
        return data


def _page(request, template: str, context: dict, *, status: int = 200, refusal=None):
    """Render ``template``; an ApplicationError ``refusal`` sets the status and headers
    (429 with Retry-After, 400 for a bad token)."""
    if refusal is not None:
        status = refusal.status_code
    response = render(request, template, context, status=status)
    for name, value in (refusal.headers if refusal is not None else {}).items():
        response[name] = value
    return response


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def verify_email_page(request):
    if request.method != "POST":
        form = VerifyEmailForm(initial={"token": request.GET.get("token", "")})
        return _page(request, "pages/verify_email.html", {"form": form})
    form = VerifyEmailForm(request.POST)
    try:
        rate_limit(request, group="verify-email")
        if not form.is_valid():
            return _page(request, "pages/verify_email.html", {"form": form}, status=400)
        data = form.cleaned_data
        services.email_verify(
            token=data["token"] or None,
            email=data["email"] or None,
            code=data["code"] or None,
            request=request,
        )
    except ApplicationError as exc:
        form.add_error(None, exc.message)
        return _page(request, "pages/verify_email.html", {"form": form}, refusal=exc)
    context = {"form": form, "done": "Your email address is verified."}
    return _page(request, "pages/verify_email.html", context)


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def reset_password_page(request):
    if request.method != "POST":
        token = request.GET.get("token", "")
        form = ResetPasswordForm(initial={"token": token})
        usable = len(token) <= TOKEN_MAX_LENGTH and selectors.password_reset_token_is_valid(
            token=token
        )
        context = {"form": form, "usable": usable, "error": None if usable else _INVALID_LINK}
        return _page(request, "pages/reset_password.html", context, status=200 if usable else 400)
    form = ResetPasswordForm(request.POST)
    context = {"form": form, "usable": True}
    try:
        rate_limit(request, group="reset-password")
        if not form.is_valid():
            context["usable"] = "token" not in form.errors
            return _page(request, "pages/reset_password.html", context, status=400)
        services.password_reset(
            token=form.cleaned_data["token"],
            new_password=form.cleaned_data["new_password"],
            request=request,
        )
    except ValidationError as exc:
        # The password validators' verdict, keyed by field (new_password).
        form.add_error(None, exc)
        return _page(request, "pages/reset_password.html", context, status=400)
    except ApplicationError as exc:
        if exc.code == "invalid_token":
            context.update(usable=False, error=_INVALID_LINK)
        else:
            context["error"] = exc.message
        return _page(request, "pages/reset_password.html", context, refusal=exc)
    context["done"] = "Your password has been changed."
    return _page(request, "pages/reset_password.html", context)
