"""Account writes, one module per concern; this package is their one public surface
(``from accounts import services; services.session_start(...)``).

- ``signup``: signup and the demo account
- ``verification``: email codes and links, the first verification's side effects
- ``sessions``: login sessions, their tokens and the per-request session check
- ``lockout``: failed-login counting and the per-account lock
- ``login``: the API login
- ``admin_login``: the admin console's login, under the same lockout
- ``two_factor``: TOTP, recovery codes, the login challenge, re-authentication
- ``api_keys``: API keys for bots and the signed-request check
- ``google``: sign-in with Google
- ``passwords``: reset by link, change while logged in
- ``roles``: what staff do to an account (role, lock, unlock)
- ``profile``: username and display name
- ``prune``: housekeeping

The audit log is :mod:`accounts.audit` (every app writes it).
"""

from accounts.services.admin_login import AdminLoginRefused, AdminOtpRefused, admin_login
from accounts.services.api_keys import (
    InvalidApiKey,
    InvalidSignature,
    IpNotAllowed,
    api_key_authenticate,
    api_key_create,
    api_key_has_scope,
    api_key_revoke,
    api_keys_revoke_all,
    stored_secrets_reencrypt,
)
from accounts.services.google import GOOGLE_CERTS_TIMEOUT, google_sign_in
from accounts.services.lockout import (
    LOCKOUT_SECONDS,
    LOCKOUT_THRESHOLD,
    LOCKOUT_WINDOW_SECONDS,
    AccountLocked,
    login_failures_clear,
    login_lock_check,
)
from accounts.services.login import login_otp_complete, user_login
from accounts.services.passwords import (
    PASSWORD_RESET_TTL,
    password_reset,
    password_reset_email_message,
    password_reset_request,
    user_password_change,
)
from accounts.services.profile import user_profile_update
from accounts.services.prune import (
    RESET_ROW_RETENTION,
    SESSION_ROW_RETENTION,
    VERIFICATION_ROW_RETENTION,
    accounts_prune,
)
from accounts.services.roles import user_lock, user_role_set, user_unlock
from accounts.services.sessions import (
    InvalidToken,
    session_logout,
    session_refresh,
    session_resume,
    session_revoke,
    session_seen,
    session_start,
    session_tokens_issue,
    session_user_get,
    sessions_expired_close,
    user_from_access_token,
    user_sessions_revoke_all,
)
from accounts.services.signup import user_ensure_demo, user_signup
from accounts.services.two_factor import (
    InvalidOtp,
    OtpRequired,
    two_factor_disable,
    two_factor_enable,
    two_factor_enabled,
    two_factor_reset,
    two_factor_setup,
)
from accounts.services.verification import (
    VERIFICATION_MAX_ATTEMPTS,
    VERIFICATION_TTL,
    email_verification_issue,
    email_verify,
    user_email_mark_verified,
    verification_email_message,
    verification_email_request,
    verification_resend_request,
    welcome_email_message,
)

__all__ = [
    "GOOGLE_CERTS_TIMEOUT",
    "LOCKOUT_SECONDS",
    "LOCKOUT_THRESHOLD",
    "LOCKOUT_WINDOW_SECONDS",
    "PASSWORD_RESET_TTL",
    "RESET_ROW_RETENTION",
    "SESSION_ROW_RETENTION",
    "VERIFICATION_MAX_ATTEMPTS",
    "VERIFICATION_ROW_RETENTION",
    "VERIFICATION_TTL",
    "AccountLocked",
    "AdminLoginRefused",
    "AdminOtpRefused",
    "InvalidApiKey",
    "InvalidOtp",
    "InvalidSignature",
    "InvalidToken",
    "IpNotAllowed",
    "OtpRequired",
    "accounts_prune",
    "admin_login",
    "api_key_authenticate",
    "api_key_create",
    "api_key_has_scope",
    "api_key_revoke",
    "api_keys_revoke_all",
    "email_verification_issue",
    "email_verify",
    "google_sign_in",
    "login_failures_clear",
    "login_lock_check",
    "login_otp_complete",
    "password_reset",
    "password_reset_email_message",
    "password_reset_request",
    "session_logout",
    "session_refresh",
    "session_resume",
    "session_revoke",
    "session_seen",
    "session_start",
    "session_tokens_issue",
    "session_user_get",
    "sessions_expired_close",
    "stored_secrets_reencrypt",
    "two_factor_disable",
    "two_factor_enable",
    "two_factor_enabled",
    "two_factor_reset",
    "two_factor_setup",
    "user_email_mark_verified",
    "user_ensure_demo",
    "user_from_access_token",
    "user_lock",
    "user_login",
    "user_password_change",
    "user_profile_update",
    "user_role_set",
    "user_sessions_revoke_all",
    "user_signup",
    "user_unlock",
    "verification_email_message",
    "verification_email_request",
    "verification_resend_request",
    "welcome_email_message",
]
