"""Accounts HTTP API under /api/v1/auth/. One class per operation; each validates input,
calls one service and serializes. Public endpoints skip authentication so a stale
``Authorization`` header cannot break signup or login."""

import ipaddress

from django.core.validators import RegexValidator
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import crypto, selectors, services
from accounts.models import ApiKey, Session, User
from cryptovault.exceptions import ApplicationError, found_or_404
from cryptovault.pagination import PageNumberPagination, paginated_response
from cryptovault.ratelimit import rate_limit

username_validator = RegexValidator(
    r"^[A-Za-z0-9_.-]{3,30}\Z",
    "Use 3 to 30 letters, digits, '_', '.' or '-'.",
    code="invalid_username",
)


def _password_field(**kwargs) -> serializers.CharField:
    # Passwords are taken verbatim: no whitespace trimming.
    return serializers.CharField(max_length=256, trim_whitespace=False, **kwargs)


class _PasswordOrEncrypted(serializers.Serializer):
    """``password`` in clear, or ``password_encrypted`` (base64 RSA-OAEP-SHA256)."""

    password = _password_field(required=False)
    password_encrypted = serializers.CharField(max_length=2048, required=False)

    def validate(self, attrs):
        encrypted = attrs.pop("password_encrypted", None)
        if encrypted is not None and "password" in attrs:
            raise serializers.ValidationError(
                {"password": ["Send either password or password_encrypted, not both."]}
            )
        if encrypted is not None:
            try:
                attrs["password"] = crypto.decrypt_password(encrypted)
            except ValueError as exc:
                raise serializers.ValidationError(
                    {"password_encrypted": ["Could not decrypt the password."]}
                ) from exc
        if not attrs.get("password"):
            raise serializers.ValidationError({"password": ["This field is required."]})
        return attrs


class UserOutputSerializer(serializers.ModelSerializer):
    email_verified = serializers.BooleanField(source="is_email_verified")

    class Meta:
        model = User
        fields = (
            "id",
            "email",
            "username",
            "name",
            "role",
            "email_verified",
            "email_verified_at",
            "date_joined",
        )


class TokensOutputSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()
    user = UserOutputSerializer()


def _current_session_id(request) -> str | None:
    """The ``sid`` of the access token that authenticated this request."""
    return request.auth.get("sid") if hasattr(request.auth, "get") else None


def _tokens_response(user: User, tokens: dict[str, str]) -> Response:
    return Response(TokensOutputSerializer({**tokens, "user": user}).data)


def _rate_limited_input(
    request: Request, serializer_class: type[serializers.Serializer], *, group: str
) -> dict:
    """Spends the request on its rate-limit ``group`` (429 past it), then answers its body
    validated by ``serializer_class`` (400 when invalid)."""
    rate_limit(request, group=group)
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class _PublicApi(APIView):
    authentication_classes = ()
    permission_classes = (AllowAny,)


class SignupApi(_PublicApi):
    class InputSerializer(_PasswordOrEncrypted):
        class Meta:
            ref_name = "SignupInput"

        email = serializers.EmailField(max_length=254)
        username = serializers.CharField(
            max_length=30, required=False, allow_null=True, validators=[username_validator]
        )
        name = serializers.CharField(max_length=150, required=False, allow_blank=True)

    @extend_schema(request=InputSerializer, responses={201: UserOutputSerializer})
    def post(self, request):
        data = _rate_limited_input(request, self.InputSerializer, group="signup")
        user = services.user_signup(**data, request=request)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class VerifyEmailApi(_PublicApi):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "VerifyEmailInput"

        email = serializers.EmailField(max_length=254, required=False)
        code = serializers.RegexField(
            r"^\d{6}\Z", required=False, error_messages={"invalid": "Enter the 6-digit code."}
        )
        token = serializers.CharField(max_length=128, required=False)

        def validate(self, attrs):
            if attrs.get("token"):
                return attrs
            missing = {f: ["This field is required."] for f in ("email", "code") if f not in attrs}
            if missing:
                raise serializers.ValidationError(missing)
            return attrs

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "VerifyEmailOutput"

        detail = serializers.CharField()
        user = UserOutputSerializer()

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request):
        data = _rate_limited_input(request, self.InputSerializer, group="verify-email")
        user = services.email_verify(**data, request=request)
        return Response(self.OutputSerializer({"detail": "Email verified.", "user": user}).data)


_ACCEPTED = inline_serializer("Accepted", {"detail": serializers.CharField()})
MAX_IP_ALLOWLIST = 20


# An anonymous request about an email address (a new code, a reset link): 202 with
# ``accepted`` whether or not an account has that address, so none can be probed. A
# comment, not a docstring: drf-spectacular would publish it as both operations' text.
class _EmailRequestApi(_PublicApi):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "EmailInput"

        email = serializers.EmailField(max_length=254)

    rate_group: str
    accepted: str

    def request_for(self, email: str) -> None:
        raise NotImplementedError

    @extend_schema(request=InputSerializer, responses={202: _ACCEPTED})
    def post(self, request):
        data = _rate_limited_input(request, self.InputSerializer, group=self.rate_group)
        self.request_for(data["email"])
        return Response({"detail": self.accepted}, status=status.HTTP_202_ACCEPTED)


class ResendVerificationApi(_EmailRequestApi):
    rate_group = "resend-verification"
    accepted = "If the account exists and is unverified, a new code is on its way."

    def request_for(self, email):
        services.verification_resend_request(email=email)


class ForgotPasswordApi(_EmailRequestApi):
    rate_group = "forgot-password"
    accepted = "If an account uses this email, a reset link is on its way."

    def request_for(self, email):
        services.password_reset_request(email=email)


class LoginApi(_PublicApi):
    class InputSerializer(_PasswordOrEncrypted):
        class Meta:
            ref_name = "LoginInput"

        email = serializers.CharField(max_length=254, required=False)
        username = serializers.CharField(max_length=254, required=False)

        def validate(self, attrs):
            attrs = super().validate(attrs)
            identifier = attrs.pop("email", None) or attrs.pop("username", None)
            if not identifier:
                raise serializers.ValidationError({"email": ["This field is required."]})
            attrs.pop("username", None)
            attrs["identifier"] = identifier
            return attrs

    @extend_schema(request=InputSerializer, responses=TokensOutputSerializer)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        valid = serializer.is_valid()
        # A locked account answers account_locked even once the IP limit kicks in; and
        # invalid attempts count against the IP limit too.
        if valid:
            services.login_lock_check(identifier=serializer.validated_data["identifier"])
        rate_limit(request, group="login")
        if not valid:
            raise serializers.ValidationError(serializer.errors)
        user, tokens = services.user_login(**serializer.validated_data, request=request)
        return _tokens_response(user, tokens)


class RefreshInputSerializer(serializers.Serializer):
    refresh = serializers.CharField(max_length=4096)


class TokenRefreshApi(_PublicApi):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TokenRefreshOutput"

        access = serializers.CharField()
        refresh = serializers.CharField()

    @extend_schema(request=RefreshInputSerializer, responses=OutputSerializer)
    def post(self, request):
        serializer = RefreshInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.session_refresh(
            refresh_token=serializer.validated_data["refresh"], request=request
        )
        return Response(self.OutputSerializer(tokens).data)


class LogoutApi(_PublicApi):
    @extend_schema(request=RefreshInputSerializer, responses={204: None})
    def post(self, request):
        serializer = RefreshInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.session_logout(refresh_token=serializer.validated_data["refresh"], request=request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ValidateResetTokenApi(_PublicApi):
    @extend_schema(
        # The URL names a verb, not a resource: "validate", not "..._retrieve".
        operation_id="auth_validate_reset_token",
        responses=inline_serializer("ResetTokenValid", {"valid": serializers.BooleanField()}),
    )
    def get(self, request, token: str):
        if len(token) > 128 or not selectors.password_reset_token_is_valid(token=token):
            raise ApplicationError("Invalid or expired reset token.", code="invalid_token")
        return Response({"valid": True})


class ResetPasswordApi(_PublicApi):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ResetPasswordInput"

        token = serializers.CharField(max_length=128)
        new_password = _password_field()

    @extend_schema(request=InputSerializer, responses=_ACCEPTED)
    def post(self, request):
        data = _rate_limited_input(request, self.InputSerializer, group="reset-password")
        services.password_reset(**data, request=request)
        return Response({"detail": "Password has been reset. Log in with the new password."})


class GoogleLoginApi(_PublicApi):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "GoogleLoginInput"

        id_token = serializers.CharField(max_length=8192)

    @extend_schema(request=InputSerializer, responses=TokensOutputSerializer)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user, tokens = services.google_sign_in(
            id_token=serializer.validated_data["id_token"], request=request
        )
        return _tokens_response(user, tokens)


class PublicKeyApi(_PublicApi):
    @extend_schema(
        responses=inline_serializer(
            "PublicKey",
            {
                "kid": serializers.CharField(),
                "alg": serializers.CharField(),
                "pem": serializers.CharField(),
            },
        )
    )
    def get(self, request):
        return Response(crypto.public_key_info())


class MeApi(APIView):
    permission_classes = (IsAuthenticated,)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MeInput"

        username = serializers.CharField(
            max_length=30, required=False, allow_null=True, validators=[username_validator]
        )
        name = serializers.CharField(max_length=150, required=False, allow_blank=True)

    @extend_schema(responses=UserOutputSerializer)
    def get(self, request):
        return Response(UserOutputSerializer(request.user).data)

    @extend_schema(request=InputSerializer, responses=UserOutputSerializer)
    def patch(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_profile_update(
            user=request.user, **serializer.validated_data, request=request
        )
        return Response(UserOutputSerializer(user).data)


class PasswordChangeApi(APIView):
    permission_classes = (IsAuthenticated,)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "PasswordChangeInput"

        current_password = _password_field()
        new_password = _password_field()

    # POST me/password changes it; the URL alone would read as a noun.
    @extend_schema(
        operation_id="auth_me_password_change",
        request=InputSerializer,
        responses=TokensOutputSerializer,
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.user_password_change(
            user=request.user,
            session_id=_current_session_id(request),
            **serializer.validated_data,
            request=request,
        )
        return _tokens_response(request.user, tokens)


class SessionOutputSerializer(serializers.ModelSerializer):
    created = serializers.DateTimeField(source="created_at")
    last_seen = serializers.DateTimeField(source="last_seen_at")
    current = serializers.SerializerMethodField()

    class Meta:
        model = Session
        fields = ("id", "created", "last_seen", "ip", "user_agent", "current")

    def get_current(self, session: Session) -> bool:
        return session.pk == self.context.get("current_session_id")


class SessionListApi(APIView):
    permission_classes = (IsAuthenticated,)
    pagination_class = PageNumberPagination

    @extend_schema(responses=SessionOutputSerializer(many=True))
    def get(self, request):
        return paginated_response(
            view=self,
            request=request,
            items=selectors.session_list(user=request.user),
            serializer_class=SessionOutputSerializer,
            context={"current_session_id": _current_session_id(request)},
        )


class SessionRevokeApi(APIView):
    permission_classes = (IsAuthenticated,)

    @extend_schema(responses={204: None})
    def delete(self, request, session_id: str):
        session = found_or_404(selectors.session_get(user=request.user, session_id=session_id))
        services.session_revoke(
            session_id=session.pk, reason="user_revoked", actor=request.user, request=request
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class LoginOtpApi(_PublicApi):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "LoginOtpInput"

        challenge = serializers.CharField(max_length=128)
        code = serializers.CharField(max_length=32, help_text="A TOTP code or a recovery code.")

    @extend_schema(request=InputSerializer, responses=TokensOutputSerializer)
    def post(self, request):
        data = _rate_limited_input(request, self.InputSerializer, group="login-otp")
        user, tokens = services.login_otp_complete(**data, request=request)
        return _tokens_response(user, tokens)


class TwoFactorSetupApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TwoFactorSetupOutput"

        otpauth_uri = serializers.CharField()
        qr_svg = serializers.CharField(help_text="The otpauth URI as a QR code (SVG).")

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request):
        return Response(self.OutputSerializer(services.two_factor_setup(user=request.user)).data)


_OTP_CODE = serializers.RegexField(
    r"^\d{6}\Z", error_messages={"invalid": "Enter the 6-digit code."}
)


class TwoFactorEnableApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TwoFactorEnableInput"

        code = _OTP_CODE

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TwoFactorEnableOutput"

        recovery_codes = serializers.ListField(
            child=serializers.CharField(), help_text="Ten single-use codes, shown once."
        )

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        codes = services.two_factor_enable(
            user=request.user, code=serializer.validated_data["code"], request=request
        )
        return Response(self.OutputSerializer({"recovery_codes": codes}).data)


class TwoFactorDisableApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TwoFactorDisableInput"

        password = _password_field()
        code = serializers.CharField(max_length=32, help_text="A TOTP code or a recovery code.")

    @extend_schema(request=InputSerializer, responses=_ACCEPTED)
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.two_factor_disable(user=request.user, **serializer.validated_data, request=request)
        return Response({"detail": "Two-factor login is off."})


class ApiKeyOutputSerializer(serializers.ModelSerializer):
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=ApiKey.Scope.choices))
    ip_allowlist = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = ApiKey
        fields: tuple[str, ...] = (
            "id",
            "label",
            "key",
            "kind",
            "scopes",
            "ip_allowlist",
            "expires_at",
            "created_at",
            "last_used_at",
        )


class ApiKeyCreatedOutputSerializer(ApiKeyOutputSerializer):
    secret = serializers.CharField(
        allow_null=True, help_text="The HMAC secret, shown this once (null for Ed25519 keys)."
    )

    class Meta(ApiKeyOutputSerializer.Meta):
        fields: tuple[str, ...] = (*ApiKeyOutputSerializer.Meta.fields, "secret")


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError as exc:
        raise serializers.ValidationError(f"{value!r} is not an IP address or CIDR.") from exc


def _cidr_check(value: str) -> None:
    _cidr(value)


class ApiKeyListCreateApi(APIView):
    pagination_class = PageNumberPagination

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ApiKeyCreateInput"

        # A field named like Field.label (the stubs type that attribute as a str).
        label = serializers.CharField(max_length=100)  # type: ignore[assignment]
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ApiKey.Scope.choices), min_length=1
        )
        ip_allowlist = serializers.ListField(
            child=serializers.CharField(max_length=50, validators=[_cidr_check]),
            max_length=MAX_IP_ALLOWLIST,
            required=False,
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True)
        ed25519_public_key = serializers.CharField(
            max_length=2048,
            required=False,
            allow_blank=True,
            help_text="PEM or base64 of the raw 32 bytes; then no secret is issued or stored.",
        )
        password = _password_field()
        otp = serializers.CharField(
            max_length=32, required=False, allow_blank=True, help_text="When 2FA is on."
        )

        def validate_ip_allowlist(self, value: list[str]) -> list[str]:
            return sorted({_cidr(v) for v in value})

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("Must be in the future.")
            return value

    @extend_schema(responses=ApiKeyOutputSerializer(many=True))
    def get(self, request):
        keys = selectors.api_key_list(user=request.user)
        return paginated_response(
            view=self, request=request, items=keys, serializer_class=ApiKeyOutputSerializer
        )

    @extend_schema(request=InputSerializer, responses={201: ApiKeyCreatedOutputSerializer})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, secret = services.api_key_create(
            user=request.user, **serializer.validated_data, request=request
        )
        body = {**ApiKeyOutputSerializer(api_key).data, "secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, key_id: int):
        api_key = found_or_404(selectors.api_key_get(user=request.user, key_id=key_id))
        services.api_key_revoke(
            api_key=api_key, reason="user_revoked", actor=request.user, request=request
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
