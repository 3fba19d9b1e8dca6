"""Sign-in with Google: verify the ID token, link or create the account, log in."""

import functools

import jwt as pyjwt
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from google.auth import exceptions as google_exceptions
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token as google_id_token
from rest_framework import status

from accounts.audit import audit_record_own
from accounts.models import AuditEvent, User
from accounts.services.login import login_complete
from accounts.services.sessions import InvalidToken
from accounts.services.signup import email_normalize
from accounts.services.two_factor import login_challenge_issue, two_factor_enabled
from accounts.services.verification import user_email_mark_verified
from cryptovault.exceptions import ApplicationError

GOOGLE_CERTS_TIMEOUT = 5.0


def _google_claims(id_token: str) -> dict:
    try:
        # Reject what is not even a JWT before any network call.
        pyjwt.get_unverified_header(id_token)
    except pyjwt.PyJWTError as exc:
        raise InvalidToken("Invalid Google ID token.", code="invalid_token") from exc
    if not settings.GOOGLE_CLIENT_IDS:
        raise ApplicationError(
            "Google sign-in is not configured.",
            code="google_not_configured",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    # google-auth waits up to 120 s for Google's certificates by default; a request
    # thread (cryptovault/asgi_handler.py) should not.
    request = functools.partial(google_requests.Request(), timeout=GOOGLE_CERTS_TIMEOUT)
    try:
        return google_id_token.verify_oauth2_token(
            id_token, request, audience=list(settings.GOOGLE_CLIENT_IDS)
        )
    except google_exceptions.TransportError as exc:
        raise ApplicationError(
            "Google is unreachable.",
            code="google_unavailable",
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        ) from exc
    except (ValueError, google_exceptions.GoogleAuthError) as exc:
        raise InvalidToken("Invalid Google ID token.", code="invalid_token") from exc


def google_sign_in(
    *, id_token: str, request: HttpRequest | None = None
) -> tuple[User, dict[str, str]]:
    """Sign in with a Google ID token: the account linked to the Google subject, else
    the account with that (Google-verified) email, else a new verified account."""
    claims = _google_claims(id_token)
    sub = str(claims.get("sub") or "")
    email = email_normalize(str(claims.get("email") or ""))
    if not sub or not email or claims.get("email_verified") not in (True, "true"):
        raise ApplicationError(
            "The Google account has no verified email.", code="google_email_not_verified"
        )
    with transaction.atomic():
        user = User.objects.select_for_update().filter(google_sub=sub).first()
        if user is None:
            user = User.objects.select_for_update().filter(email__iexact=email).first()
            if user is None:
                user = User.objects.create_user(
                    email=email,
                    password=None,
                    name=str(claims.get("name") or "")[:150],
                    google_sub=sub,
                )
                audit_record_own(
                    action=AuditEvent.Action.SIGNUP,
                    user=user,
                    request=request,
                    data={"provider": "google"},
                )
            elif user.google_sub:
                raise ApplicationError(
                    "This email is linked to another Google account.",
                    code="google_account_conflict",
                    status_code=status.HTTP_409_CONFLICT,
                )
            else:
                if not user.is_email_verified:
                    # Whoever registered this unverified address may not be its owner:
                    # their password must not survive the owner's first sign-in.
                    user.set_unusable_password()
                user.google_sub = sub
                user.save(update_fields=["google_sub", "password"])
        if not user.is_active:
            raise ApplicationError(
                "This account is disabled.", code="account_disabled", status_code=403
            )
        user_email_mark_verified(user=user, request=request)
        if not two_factor_enabled(user=user):
            tokens = login_complete(
                user=user, action=AuditEvent.Action.GOOGLE_LOGIN, request=request
            )
            return user, tokens
    # Google stands for the password: the account's second factor is still asked for.
    raise login_challenge_issue(user=user, action=AuditEvent.Action.GOOGLE_LOGIN)
