from accounts import apis
from cryptovault.routes import api_path

urlpatterns = [
    api_path("signup", apis.SignupApi, "auth-signup"),
    api_path("verify-email", apis.VerifyEmailApi, "auth-verify-email"),
    api_path("resend-verification", apis.ResendVerificationApi, "auth-resend-verification"),
    api_path("login", apis.LoginApi, "auth-login"),
    api_path("login/otp", apis.LoginOtpApi, "auth-login-otp"),
    api_path("token/refresh", apis.TokenRefreshApi, "auth-token-refresh"),
    api_path("logout", apis.LogoutApi, "auth-logout"),
    api_path("forgot-password", apis.ForgotPasswordApi, "auth-forgot-password"),
    api_path(
        "validate-reset-token/<str:token>",
        apis.ValidateResetTokenApi,
        "auth-validate-reset-token",
    ),
    api_path("reset-password", apis.ResetPasswordApi, "auth-reset-password"),
    api_path("google", apis.GoogleLoginApi, "auth-google"),
    api_path("public-key", apis.PublicKeyApi, "auth-public-key"),
    api_path("me", apis.MeApi, "auth-me"),
    api_path("me/password", apis.PasswordChangeApi, "auth-me-password"),
    api_path("sessions", apis.SessionListApi, "auth-sessions"),
    api_path("sessions/<str:session_id>", apis.SessionRevokeApi, "auth-session-revoke"),
    api_path("2fa/setup", apis.TwoFactorSetupApi, "auth-2fa-setup"),
    api_path("2fa/enable", apis.TwoFactorEnableApi, "auth-2fa-enable"),
    api_path("2fa/disable", apis.TwoFactorDisableApi, "auth-2fa-disable"),
    api_path("api-keys", apis.ApiKeyListCreateApi, "auth-api-keys"),
    api_path("api-keys/<int:key_id>", apis.ApiKeyRevokeApi, "auth-api-key-revoke"),
]
