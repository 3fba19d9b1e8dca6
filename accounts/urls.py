from django.urls import path

from accounts import apis

urlpatterns = [
    path("signup", apis.SignupApi.as_view(), name="auth-signup"),
    path("verify-email", apis.VerifyEmailApi.as_view(), name="auth-verify-email"),
    path(
        "resend-verification",
        apis.ResendVerificationApi.as_view(),
        name="auth-resend-verification",
    ),
    path("login", apis.LoginApi.as_view(), name="auth-login"),
    path("login/otp", apis.LoginOtpApi.as_view(), name="auth-login-otp"),
    path("token/refresh", apis.TokenRefreshApi.as_view(), name="auth-token-refresh"),
    path("logout", apis.LogoutApi.as_view(), name="auth-logout"),
    path("forgot-password", apis.ForgotPasswordApi.as_view(), name="auth-forgot-password"),
    path(
        "validate-reset-token/<str:token>",
        apis.ValidateResetTokenApi.as_view(),
        name="auth-validate-reset-token",
    ),
    path("reset-password", apis.ResetPasswordApi.as_view(), name="auth-reset-password"),
    path("google", apis.GoogleLoginApi.as_view(), name="auth-google"),
    path("public-key", apis.PublicKeyApi.as_view(), name="auth-public-key"),
    path("me", apis.MeApi.as_view(), name="auth-me"),
    path("me/password", apis.PasswordChangeApi.as_view(), name="auth-me-password"),
    path("sessions", apis.SessionListApi.as_view(), name="auth-sessions"),
    path(
        "sessions/<str:session_id>",
        apis.SessionRevokeApi.as_view(),
        name="auth-session-revoke",
    ),
    path("2fa/setup", apis.TwoFactorSetupApi.as_view(), name="auth-2fa-setup"),
    path("2fa/enable", apis.TwoFactorEnableApi.as_view(), name="auth-2fa-enable"),
    path("2fa/disable", apis.TwoFactorDisableApi.as_view(), name="auth-2fa-disable"),
    path("api-keys", apis.ApiKeyListCreateApi.as_view(), name="auth-api-keys"),
    path("api-keys/<int:key_id>", apis.ApiKeyRevokeApi.as_view(), name="auth-api-key-revoke"),
]
