"""DRF authentication: a simplejwt access token whose login session is still alive."""

from rest_framework.exceptions import AuthenticationFailed
from rest_framework_simplejwt.authentication import JWTAuthentication


class SessionJWTAuthentication(JWTAuthentication):
    """Bearer access JWT + server-side session check.

    The signature, expiry and token type are checked by simplejwt (so ``alg: none``,
    tampered and expired tokens are refused); then the ``sid`` claim must name a live
    session of that user. Logout and revocation delete the session, so its tokens stop
    working on the very next request.
    """

    def get_user(self, validated_token):
        # Imported here: DRF imports this class while rest_framework.views is still
        # initialising, and the services' imports lead back to it (accounts.services ->
        # cryptovault.exceptions -> rest_framework.views -> DEFAULT_AUTHENTICATION_CLASSES).
        from accounts.services import session_user_get

        # A session store that cannot answer raises one of DEPENDENCY_ERRORS, which
        # DependencyOutageMiddleware answers as a JSON 503 with Retry-After.
        user = session_user_get(token=validated_token)
        if user is None:
            raise AuthenticationFailed("Session has ended.", code="session_revoked")
        return user
