"""Admin sessions (Django's session framework, in PostgreSQL): an idle timeout and an
absolute limit since login.

- Idle: ``SESSION_COOKIE_AGE`` is ``ADMIN_SESSION_IDLE_SECONDS``; a session row past its
  ``expire_date`` loads empty (logged out). Activity slides it, but a session is written
  at most once per ``ACTIVITY_RESOLUTION_SECONDS`` instead of on every request
  (``SESSION_SAVE_EVERY_REQUEST``), so a session ends between
  ``ADMIN_SESSION_IDLE_SECONDS - ACTIVITY_RESOLUTION_SECONDS`` and
  ``ADMIN_SESSION_IDLE_SECONDS`` after its last request.
- Absolute: the login time is stored in the session; past ``ADMIN_SESSION_MAX_SECONDS``
  the middleware logs it out, however active it is.
- Revocation ("revoke all sessions") is the user's ``sessions_epoch``, checked by Django
  itself when it loads the session's user (``User.get_session_auth_hash``).

Requests without a session cookie (every JWT/API-key API call) cost nothing here.
"""

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import logout
from django.utils import timezone

from cryptovault.middleware import HybridMiddleware

LOGIN_AT = "cv_login_at"
SEEN_AT = "cv_seen_at"
ACTIVITY_RESOLUTION_SECONDS = 60


def _now() -> int:
    return int(timezone.now().timestamp())


def admin_session_stamp(sender, request, user, **kwargs) -> None:
    """``user_logged_in`` receiver: every way into a Django session (the admin login,
    the test client's ``force_login``) starts the absolute limit's clock."""
    now = _now()
    request.session[LOGIN_AT] = now
    request.session[SEEN_AT] = now


class AdminSessionMiddleware(HybridMiddleware):
    """After AuthenticationMiddleware: ends sessions past the absolute limit (or made
    before it existed, without a login time) and slides the idle expiry. Sync and
    async, so the async API views pay no thread hop for it; its check reads the session
    store, so both paths are its own (the async one hops to a thread only with a
    session cookie)."""

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        # No cookie: no session to load (nothing to do on an API request).
        if request.session.session_key is not None:
            self._enforce(request)
        return self.get_response(request)

    async def _acall(self, request):
        if request.session.session_key is not None:
            await sync_to_async(self._enforce)(request)
        return await self.get_response(request)

    @staticmethod
    def _enforce(request) -> None:
        session = request.session
        if not request.user.is_authenticated:
            return
        now = _now()
        login_at = session.get(LOGIN_AT)
        if login_at is None or now - login_at >= settings.ADMIN_SESSION_MAX_SECONDS:
            logout(request)
        elif now - session.get(SEEN_AT, 0) >= ACTIVITY_RESOLUTION_SECONDS:
            session[SEEN_AT] = now  # modified: saved with a new expiry
