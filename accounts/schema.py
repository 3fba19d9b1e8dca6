"""OpenAPI: document SessionJWTAuthentication as the bearer JWT scheme it is, and API
keys as the three headers a signed request carries, on the operations that accept them."""

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from accounts.authentication import api_key_scope_required


class SessionJWTScheme(SimpleJWTScheme):
    target_class = "accounts.authentication.SessionJWTAuthentication"
    name = "jwtAuth"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    # Named after the headers (and sorted after jwtAuth, the scheme listed first).
    name = ["xApiKey", "xApiTimestamp", "xApiSignature"]

    def get_security_requirement(self, auto_schema):
        # Only where a key may be used: the view declares a scope for the method.
        if api_key_scope_required(auto_schema.view, auto_schema.method) is None:
            return []
        return {name: [] for name in self.name}

    def get_security_definition(self, auto_schema):
        return [
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "The key's public id, sent with X-API-Timestamp and "
                "X-API-Signature. Scopes: read for GETs, trade to place and cancel orders "
                "and to create and delete alerts.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Timestamp",
                "description": "Epoch milliseconds, within 10 s of the server's clock.",
            },
            {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Signature",
                "description": "hex HMAC-SHA256(secret, timestamp + METHOD + path?query + "
                "body), or for Ed25519 keys the base64 signature of the same string. "
                "Each signature is accepted once.",
            },
        ]
