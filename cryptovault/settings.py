"""CryptoVault settings: one file, configured entirely from the environment.

Every knob is read through the single ``env`` object (django-environ). Local
defaults apply only in development (``DEBUG=true``, which ``make run`` and the tests
set); production (``DEBUG`` off, the default) refuses to start without its own
``SECRET_KEY``, JWT signing key, ``ALLOWED_HOSTS`` and RSA key.
"""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import environ
from cryptography.fernet import Fernet, MultiFernet
from django.core.exceptions import ImproperlyConfigured
from pythonjsonlogger.core import RESERVED_ATTRS
from whitenoise.compress import Compressor

from cryptovault.reconnect import RetryingRedisConnection

# The coin and venue catalogue (plain data, no Django): the tracked coins' and venue
# fees' defaults.
from markets import catalogue

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Off unless asked: a deploy that forgets it must not run on the public dev keys.
# `make run` and the tests turn it on (Makefile, pyproject's pytest-env).
DEBUG = env.bool("DEBUG", default=False)
_DEV_SECRET_KEY = "django-insecure-dev-only-key-never-use-in-production"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY if DEBUG else "")
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"] if DEBUG else []
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

HTTPS = env.bool("HTTPS", default=False)
APP_URL = env.str("APP_URL", default="http://localhost:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "django_celery_beat",
    "channels",
    "anymail",
    "corsheaders",
    # The project package as an app: its admin module re-registers the models above
    # (groups, periodic tasks) with the audit trail, so it comes after them.
    "cryptovault",
    "accounts",
    "markets",
    "orders",
    "notifications",
    "bots",
]

# The security headers wrap everything below them, early refusals included.
MIDDLEWARE = [
    "cryptovault.metrics.MetricsMiddleware",
    "cryptovault.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "cryptovault.middleware.ContentSecurityPolicyMiddleware",
    # Static files answer here, under the headers above and before anything that
    # touches PostgreSQL or Redis: the admin keeps its styles during an outage.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Answers preflights itself, so it sits above anything that could refuse one.
    "corsheaders.middleware.CorsMiddleware",
    "cryptovault.middleware.DependencyOutageMiddleware",
    "cryptovault.middleware.RequestLimitsMiddleware",
    "cryptovault.db_router.ReplicaPinningMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.admin_sessions.AdminSessionMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "cryptovault.urls"
ASGI_APPLICATION = "cryptovault.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Data stores -------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@localhost:5432/cryptovault"),
}
# Persistent connections in every process: web requests run on a fixed set of threads
# (cryptovault/asgi_handler.py) and the worker recycles around each task (orders.tasks).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# Django's backend plus connect retries: a PostgreSQL restart shorter than
# DATABASE_CONNECT_RETRY_SECONDS is a slower request, not a 503 (cryptovault/reconnect.py).
POSTGRESQL_ENGINE = "cryptovault.postgresql"
DATABASE_CONNECT_RETRY_SECONDS = env.float("DATABASE_CONNECT_RETRY_SECONDS", default=3.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = POSTGRESQL_ENGINE
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
# Limits every session starts with (milliseconds, 0 = none), for web, worker and beat
# alike: no request or task runs a statement that should take seconds, so one that
# does is stuck behind a lock or a bug; it fails fast, as a 503 on the web or an
# OperationalError the task retries on, instead of holding a request thread and a
# connection. A process that needs more (a migration building an index on a big
# table) runs with its own DATABASE_STATEMENT_TIMEOUT_MS.
DATABASE_LIMITS_MS = {
    "statement_timeout": env.int("DATABASE_STATEMENT_TIMEOUT_MS", default=10_000),
    "lock_timeout": env.int("DATABASE_LOCK_TIMEOUT_MS", default=5_000),
    "idle_in_transaction_session_timeout": env.int(
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=60_000
    ),
}
# The session starts in UTC, so Django skips its per-connection ``set_config``.
_SESSION_OPTIONS = " ".join(
    ["-c TimeZone=UTC", *(f"-c {name}={ms}" for name, ms in DATABASE_LIMITS_MS.items())]
)
DATABASES["default"]["OPTIONS"].setdefault("options", _SESSION_OPTIONS)
# Optional streaming replica for reads that tolerate lag (cryptovault/db_router.py).
# Tests mirror it onto the test database: there is no separate replica to create.
if env.str("DATABASE_REPLICA_URL", default=""):
    DATABASES["replica"] = env.db_url("DATABASE_REPLICA_URL")
    if DATABASES["replica"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["replica"]["ENGINE"] = POSTGRESQL_ENGINE
    DATABASES["replica"]["CONN_MAX_AGE"] = DATABASES["default"]["CONN_MAX_AGE"]
    DATABASES["replica"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["replica"].setdefault("OPTIONS", {})["connect_timeout"] = 2
    DATABASES["replica"]["OPTIONS"].setdefault("options", _SESSION_OPTIONS)
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["cryptovault.db_router.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="redis://localhost:6379/0")
# Redis timeouts. Every Redis client the platform builds sets its socket timeouts
# explicitly: redis-py 8 defaults both to 5 s (redis-py#4091), and a client whose socket
# timeout is not above the longest read it waits in fails that wait with TimeoutError
# while Redis is merely idle (channels_redis#422). Per client:
# - cache (django-redis; sessions, price store, locks, health check): plain commands
#   only, the poll locks are taken without blocking; 2 s, so a dead Redis is a quick 503.
# - channel layer: each process waits in BZPOPMIN for up to 5 s (channels-redis's
#   brpop_timeout) for /ws/user events; 10 s covers it plus a loaded server's delay,
#   and a half-open connection still fails within 10 s instead of hanging.
# - price feed pub/sub (markets.consumers): get_message(timeout=5) bounds each read
#   itself; other commands use REDIS_SOCKET_TIMEOUT, health check PING every 15 s.
# - Celery broker (kombu): BRPOP with a 1 s server timeout (kombu's brpop_timeout, set by
#   the ``polling_interval`` transport option when given); kombu would otherwise pass no
#   timeout at all, so a publish on a dead connection waited forever.
# - dashboard queue depths and the async price reads: plain commands, 2 s.
REDIS_SOCKET_CONNECT_TIMEOUT = 2
REDIS_SOCKET_TIMEOUT = 10
# The cache's connections retry connecting (never a command) for this long, so a Redis
# restart shorter than it is a slower request, not a 503 (cryptovault/reconnect.py).
REDIS_CONNECT_RETRY_SECONDS = env.float("REDIS_CONNECT_RETRY_SECONDS", default=3.0)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cv",
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_CONNECT_TIMEOUT,
            "SOCKET_TIMEOUT": 2,
            "CONNECTION_POOL_KWARGS": {"connection_class": RetryingRedisConnection},
        },
    }
}
# The channel layer carries per-user events (groups ``user.<id>``, ``session.<sid>``);
# price ticks bypass it (one Redis publish per tick, see markets.consumers). Group
# membership outlives the default day so a long-lived /ws/user socket keeps its events.
# A host given as a dict is an ``address`` plus keyword arguments of redis-py's
# ConnectionPool.from_url. redis-py 8 caps an async pool at 100 connections, and every
# stream that joins its groups takes one for the moment: a reconnect storm of 500 streams
# per process got 503s (MaxConnectionsError) until the cap was raised (bench/sse.py).
CHANNEL_LAYER_MAX_CONNECTIONS = env.int("CHANNEL_LAYER_MAX_CONNECTIONS", default=1000)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "cryptovault.channel_layer.ChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": REDIS_SOCKET_TIMEOUT,
                    "socket_connect_timeout": REDIS_SOCKET_CONNECT_TIMEOUT,
                    "socket_keepalive": True,
                    "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                }
            ],
            "prefix": "cv:ws",
            "group_expiry": 7 * 86400,
        },
    }
}

# --- Metrics (cryptovault/metrics.py, README "Metrics") --------------------------
# GET /metrics on the web port needs "Authorization: Bearer <METRICS_TOKEN>"; unset, the
# endpoint does not exist. A Celery worker serves the same registry, without a token, on
# METRICS_PORT (unset: none): a port that no Service or Ingress exposes.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PORT = env.int("METRICS_PORT", default=None)

# --- Celery ------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker that has received nothing for this long while messages wait in its queues is
# reconnected to the broker (cryptovault.celery.ConsumerWatchdog).
WORKER_STALL_SECONDS = env.float("WORKER_STALL_SECONDS", default=30.0)
WORKER_STALL_CHECK_SECONDS = env.float("WORKER_STALL_CHECK_SECONDS", default=5.0)
# Celery's Django fixup closes the DB connection around every task (ignoring
# CONN_MAX_AGE) unless this is set; a worker run with CONN_MAX_AGE > 0 (Procfile) then
# keeps its connection, recycled by Django's own rules around each task (cryptovault.celery).
if DATABASES["default"]["CONN_MAX_AGE"]:
    CELERY_DB_REUSE_MAX = 100_000
# A task redelivered after a worker crash must not wait the default hour.
# Socket timeouts: see "Redis timeouts" above (BRPOP waits 1 s, well under them).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", 300),
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_SOCKET_CONNECT_TIMEOUT,
    "socket_keepalive": True,
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE: dict = {}
# The order queue has its own queue, so a backlog of emails never delays fills.
CELERY_TASK_ROUTES = {"orders.*": {"queue": "orders"}}
# Safety net for an order whose enqueue was lost after commit (broker blip).
CELERY_BEAT_SCHEDULE["orders-queue-sweep"] = {"task": "orders.queue_sweep", "schedule": 30.0}
# Safety net for a lost wake-up of the notification email drain (notifications.services).
CELERY_BEAT_SCHEDULE["notifications-emails-drain"] = {
    "task": "notifications.emails_drain",
    "schedule": 60.0,
    "options": {"expires": 60, "expire_seconds": 60},
}

# --- Auth --------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
PASSWORD_HASHERS = [
    # Argon2id at OWASP's cost, far cheaper than Django's default (accounts/hashers.py).
    "accounts.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=7),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    # Expiry is exact; only the configured algorithm is accepted (never "none").
    "LEEWAY": 0,
}
SESSION_IDLE_SECONDS = env.int("SESSION_IDLE_SECONDS", default=1200)
MAX_SESSIONS_PER_USER = env.int("MAX_SESSIONS_PER_USER", default=5)
# Admin sessions (Django's, cookie-identified) live in PostgreSQL: losing Redis logs no
# operator out, and "revoke all sessions" (User.sessions_epoch) holds whatever the cache
# does. Idle timeout and absolute limit since login: accounts/admin_sessions.py.
SESSION_ENGINE = "django.contrib.sessions.backends.db"
ADMIN_SESSION_IDLE_SECONDS = env.int("ADMIN_SESSION_IDLE_SECONDS", default=30 * 60)
ADMIN_SESSION_MAX_SECONDS = env.int("ADMIN_SESSION_MAX_SECONDS", default=12 * 3600)
SESSION_COOKIE_AGE = ADMIN_SESSION_IDLE_SECONDS
# Daily: close idled-out session rows, drop expired codes and reset links.
CELERY_BEAT_SCHEDULE["accounts-prune"] = {"task": "accounts.prune", "schedule": 86400.0}
# Daily: the user event log past its retention (notifications.events).
CELERY_BEAT_SCHEDULE["notifications-events-prune"] = {
    "task": "notifications.events_prune",
    "schedule": 86400.0,
}
RSA_PRIVATE_KEY = env.str("RSA_PRIVATE_KEY", default="")
RSA_PRIVATE_KEY_FILE = env.str("RSA_PRIVATE_KEY_FILE", default=str(BASE_DIR / ".keys/rsa.pem"))
# Fernet keys (comma-separated) encrypting API key secrets and TOTP secrets at rest: the
# first encrypts, all decrypt (MultiFernet); `manage.py secrets_reencrypt` moves every
# stored secret under the first. Only development has a built-in one.
_DEV_API_KEY_ENCRYPTION_KEY = "ZGV2LW9ubHktYXBpLWtleS1lbmNyeXB0aW9uLWtleSE="  # noqa: S105
API_KEY_ENCRYPTION_KEYS = env.list(
    "API_KEY_ENCRYPTION_KEYS", default=[_DEV_API_KEY_ENCRYPTION_KEY] if DEBUG else []
)
# API key signatures: the timestamp may be this far from the server's clock either way.
API_KEY_TIMESTAMP_WINDOW_MS = 10_000

# Production refuses to start on anything a developer machine would make up: the dev
# SECRET_KEY (it also signs JWTs unless JWT_SIGNING_KEY is set), no host list, or a
# password-transport key that accounts.crypto would otherwise have to generate.
if not DEBUG:
    _missing = []
    if not SECRET_KEY or SECRET_KEY == _DEV_SECRET_KEY:
        _missing.append("SECRET_KEY must be set to a secret of your own")
    if not ALLOWED_HOSTS:
        _missing.append("ALLOWED_HOSTS must be set")
    # Unset, JWT_SIGNING_KEY is SECRET_KEY, which the first check covers.
    if SIMPLE_JWT["SIGNING_KEY"] != SECRET_KEY and SIMPLE_JWT["SIGNING_KEY"] in (
        "",
        _DEV_SECRET_KEY,
    ):
        _missing.append("JWT_SIGNING_KEY must be a secret of your own (or unset: SECRET_KEY)")
    if not RSA_PRIVATE_KEY.strip() and not (
        Path(RSA_PRIVATE_KEY_FILE).is_file() and Path(RSA_PRIVATE_KEY_FILE).stat().st_size
    ):
        _missing.append(
            "RSA_PRIVATE_KEY (PEM) or RSA_PRIVATE_KEY_FILE (an existing PEM file) must be set"
        )
    if not API_KEY_ENCRYPTION_KEYS or _DEV_API_KEY_ENCRYPTION_KEY in API_KEY_ENCRYPTION_KEYS:
        _missing.append(
            "API_KEY_ENCRYPTION_KEYS must be set to Fernet keys of your own "
            "(Fernet.generate_key(), comma-separated)"
        )
    else:
        try:
            MultiFernet([Fernet(key.strip()) for key in API_KEY_ENCRYPTION_KEYS])
        except ValueError:
            _missing.append(
                "API_KEY_ENCRYPTION_KEYS must be set to Fernet keys (32 url-safe base64 bytes)"
            )
    if _missing:
        raise ImproperlyConfigured(
            "DEBUG is off (production) and the configuration is unsafe: "
            + "; ".join(_missing)
            + ". Set them, or DEBUG=true for development."
        )
GOOGLE_CLIENT_IDS = env.list("GOOGLE_CLIENT_IDS", default=[])
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
RATELIMIT_USE_CACHE = "default"
# Behind a trusted proxy the client address comes from X-Forwarded-For.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])

# --- Domain knobs --------------------------------------------------------------
MARKET_DATA_URL = env.str("MARKET_DATA_URL", default="https://api.coingecko.com/api/v3").rstrip("/")
COINGECKO_API_KEY = env.str("COINGECKO_API_KEY", default="")
COINGECKO_PLAN = env.str("COINGECKO_PLAN", default="demo")
MARKET_DATA_FALLBACK = env.str("MARKET_DATA_FALLBACK", default="simulated")
TRACKED_COINS = env.list("TRACKED_COINS", default=catalogue.DEFAULT_TRACKED_COINS)
PRICE_POLL_SECONDS = env.int("PRICE_POLL_SECONDS", default=10)
PRICE_STALE_SECONDS = env.int("PRICE_STALE_SECONDS", default=60)
SIGNUP_BONUS_USD = env.str("SIGNUP_BONUS_USD", default="10000")
TRADING_FEE_RATE = Decimal(env.str("TRADING_FEE_RATE", default="0.001"))
SIMULATOR_PORT = env.int("SIMULATOR_PORT", default=8765)
# Market data client: per-call timeouts, retries (5xx/timeouts) with exponential back-off.
MARKET_DATA_CONNECT_TIMEOUT = env.float("MARKET_DATA_CONNECT_TIMEOUT", default=3.0)
MARKET_DATA_READ_TIMEOUT = env.float("MARKET_DATA_READ_TIMEOUT", default=5.0)
MARKET_DATA_RETRIES = env.int("MARKET_DATA_RETRIES", default=2)
MARKET_DATA_RETRY_BACKOFF = env.float("MARKET_DATA_RETRY_BACKOFF", default=0.5)
# No retry starts unless it can end within this many seconds of the first attempt.
MARKET_DATA_DEADLINE = env.float("MARKET_DATA_DEADLINE", default=8.0)
# Venue tickers: one coin per run, round-robin, so 6 s adds 10 calls/min to the 6 of the
# price poll, inside CoinGecko Demo's ~30/min with room for details and charts.
TICKERS_POLL_SECONDS = env.int("TICKERS_POLL_SECONDS", default=6)
# Upstream calls per sliding minute (every attempt counts, as CoinGecko counts them), and
# the part of them only the price poll may spend: details, history and tickers share the
# rest (default 30 - 10 = 20: 10 for tickers, 10 for details and charts).
MARKET_DATA_BUDGET_PER_MINUTE = env.int("MARKET_DATA_BUDGET_PER_MINUTE", default=30)
MARKET_DATA_POLL_RESERVED_PER_MINUTE = env.int("MARKET_DATA_POLL_RESERVED_PER_MINUTE", default=10)
# How long a request waits for another request's upstream fetch of the same data before
# it serves the last copy (or a 503) instead.
MARKET_DATA_SINGLE_FLIGHT_WAIT = env.float("MARKET_DATA_SINGLE_FLIGHT_WAIT", default=3.0)
# Fetched details and charts are kept this long past their freshness, to serve while
# the budget or the source says no.
MARKET_DATA_LAST_COPY_SECONDS = env.int("MARKET_DATA_LAST_COPY_SECONDS", default=86400)
ARBITRAGE_MIN_NET_PCT = Decimal(env.str("ARBITRAGE_MIN_NET_PCT", default="0"))
ARBITRAGE_MAX_AGE_SECONDS = env.int("ARBITRAGE_MAX_AGE_SECONDS", default=600)
# Taker fee per venue (CoinGecko exchange id); others pay ARBITRAGE_DEFAULT_FEE.
ARBITRAGE_VENUE_FEES = {venue.id: venue.taker_fee for venue in catalogue.VENUES.values()}
ARBITRAGE_DEFAULT_FEE = Decimal(
    env.str("ARBITRAGE_DEFAULT_FEE", default=str(catalogue.DEFAULT_VENUE_FEE))
)
COIN_DETAILS_CACHE_SECONDS = env.int("COIN_DETAILS_CACHE_SECONDS", default=300)
# One history row per coin per interval (PostgreSQL), kept for a year.
PRICE_HISTORY_INTERVAL_SECONDS = env.int("PRICE_HISTORY_INTERVAL_SECONDS", default=60)
PRICE_HISTORY_RETENTION_DAYS = 366
# Queued runs expire after one period: a worker that was down does not replay a backlog.
CELERY_BEAT_SCHEDULE["markets-prices-poll"] = {
    "task": "markets.prices_poll",
    "schedule": float(PRICE_POLL_SECONDS),
    "options": {"expires": PRICE_POLL_SECONDS, "expire_seconds": PRICE_POLL_SECONDS},
}
CELERY_BEAT_SCHEDULE["markets-tickers-poll"] = {
    "task": "markets.tickers_poll",
    "schedule": float(TICKERS_POLL_SECONDS),
    "options": {"expires": TICKERS_POLL_SECONDS, "expire_seconds": TICKERS_POLL_SECONDS},
}
# A minute's price age and queue depth for the dashboard charts (markets.StatusSample).
CELERY_BEAT_SCHEDULE["markets-status-sample"] = {
    "task": "markets.status_sample",
    "schedule": 60.0,
    "options": {"expires": 60, "expire_seconds": 60},
}
CELERY_BEAT_SCHEDULE["markets-history-prune"] = {
    "task": "markets.history_prune",
    "schedule": 86400.0,
    "options": {"expires": 3600, "expire_seconds": 3600},
}

# --- Email ---------------------------------------------------------------------
# EMAIL_BACKEND is any Django email backend: a dotted path, or the short name of an
# ESP django-anymail supports (sendgrid, resend, amazon_ses, mailgun, postmark, ...).
# SMTP comes from EMAIL_URL (smtp://, smtp+tls://, smtp+ssl://user:pass@host:port).
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default=_email["EMAIL_BACKEND"])
if "." not in EMAIL_BACKEND:
    EMAIL_BACKEND = f"anymail.backends.{EMAIL_BACKEND}.EmailBackend"
EMAIL_HOST = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email.get("EMAIL_USE_TLS"))
EMAIL_USE_SSL = bool(_email.get("EMAIL_USE_SSL"))
EMAIL_TIMEOUT = 10
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(BASE_DIR / "var/mail"))
DEFAULT_FROM_EMAIL = env.str(
    "DEFAULT_FROM_EMAIL", default="CryptoVault <no-reply@cryptovault.local>"
)
# django-anymail's settings, one env var each: ANYMAIL_<NAME> becomes ANYMAIL["<NAME>"]
# (ANYMAIL_SENDGRID_API_KEY, ANYMAIL_RESEND_API_KEY, ANYMAIL_POSTMARK_SERVER_TOKEN,
# ANYMAIL_MAILGUN_API_KEY + ANYMAIL_MAILGUN_SENDER_DOMAIN, ...). Every ESP option Anymail
# documents is reachable without a settings change; Amazon SES takes its credentials
# and region from boto3's own AWS_* variables (or the instance role).
ANYMAIL = {
    name.removeprefix("ANYMAIL_"): value
    for name, value in env.ENVIRON.items()
    if name.startswith("ANYMAIL_")
}

# --- HTTP hardening ------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = HTTPS and env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^health$"]
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
# Browser apps on other origins (django-cors-headers), for the API only. Bearer tokens,
# not cookies: no credentials, so a listed origin never rides a user's session. The same
# origins may open WebSocket/SSE streams (cryptovault/cors.py); the fast lane for
# GET /api/v1/prices adds these headers through the same middleware (markets/asgi.py).
_app_url = urlsplit(APP_URL)
CORS_ALLOWED_ORIGINS = env.list(
    "CORS_ALLOWED_ORIGINS", default=[f"{_app_url.scheme}://{_app_url.netloc}"]
)
CORS_URLS_REGEX = r"^/api/"
CORS_ALLOW_CREDENTIALS = False
# last-event-id: an EventSource polyfill that sends Authorization resumes a stream with it.
CORS_ALLOW_HEADERS = [
    "accept",
    "authorization",
    "content-type",
    "idempotency-key",
    "last-event-id",
    "x-api-key",
    "x-api-signature",
    "x-api-timestamp",
    "x-request-id",
]
CORS_EXPOSE_HEADERS = ["x-request-id", "retry-after"]
# Browsers cap it (Chromium at 2 h, Firefox at 24 h); a day asks for the most.
CORS_PREFLIGHT_MAX_AGE = env.int("CORS_PREFLIGHT_MAX_AGE", default=86400)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)
# Request threads per web process, each with its own persistent DB connection.
WEB_THREADS = env.int("WEB_THREADS", default=8)
# Server-Sent Events (notifications.streams): a comment this often keeps proxies from
# timing an idle stream out; open streams are capped per user and per client IP.
STREAM_KEEPALIVE_SECONDS = env.float("STREAM_KEEPALIVE_SECONDS", default=15.0)
STREAM_MAX_PER_USER = env.int("STREAM_MAX_PER_USER", default=5)
STREAM_MAX_PER_IP = env.int("STREAM_MAX_PER_IP", default=50)

# --- I18N / static ---------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Served by the app itself in every mode (WhiteNoise, cryptovault/middleware.py): hashed
# names, brotli/gzip variants and a year of immutable caching once `collectstatic` has
# run (make run, the image). Without it (tests, DEBUG), plain names from the finders.
STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var/static")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "cryptovault.storage.StaticFilesStorage"},
}
# Templates only ever link hashed names; compressing source maps (megabytes that only
# a developer's devtools fetch) would double collectstatic's time for nothing.
WHITENOISE_KEEP_ONLY_HASHED_FILES = True
# Development serves straight from the apps' static dirs too, and sees edits at once.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
WHITENOISE_SKIP_COMPRESS_EXTENSIONS = [*Compressor.SKIP_COMPRESS_EXTENSIONS, "map"]

# --- Content-Security-Policy (django-csp) ---------------------------------------------
# HTML pages (admin, dashboard, docs) load only from this origin; views that need more
# (the API docs) add exactly that with django-csp's decorators. Every other response
# (JSON, static files) gets CSP_API_POLICY (cryptovault.middleware).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
CSP_API_POLICY = {"default-src": ["'none'"], "frame-ancestors": ["'none'"]}

# --- DRF / OpenAPI ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["cryptovault.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # simplejwt + the token's login session must still be alive (instant revocation).
        "accounts.authentication.SessionJWTAuthentication",
        # X-API-Key + X-API-Timestamp + X-API-Signature; views declare the scope they need.
        "accounts.authentication.ApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "cryptovault.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "cryptovault.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "cryptovault.schema.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CryptoVault API",
    "DESCRIPTION": "Crypto market data and multi-user paper trading.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Tags (the generated client's modules) from the first segment after /api/vN/.
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]+",
    # The order's enums by their owner's name: a bare "StatusEnum" says nothing in an SDK.
    "ENUM_NAME_OVERRIDES": {
        "OrderSideEnum": "orders.models.Order.Side",
        "OrderTypeEnum": "orders.models.Order.Type",
        "OrderStatusEnum": "orders.models.Order.Status",
        "ApiKeyKindEnum": "accounts.models.ApiKey.Kind",
        "ApiKeyScopeEnum": "accounts.models.ApiKey.Scope",
    },
    # Swagger UI and ReDoc from drf-spectacular-sidecar's static files: no CDN, works
    # offline, and the version is the pinned one.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # "Authorize" keeps the bearer token across reloads of the docs page; no validator
    # badge (Swagger UI would fetch it from validator.swagger.io).
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "validatorUrl": None},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "markets.schema.prices_operation_add",
    ],
}

# --- Logging: one JSON object per line, each carrying the request id ---------------
# No access token reaches a log line: query parameters named like a token are redacted
# from every record (cryptovault/logging.py), uvicorn's included.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING_CONFIG = "cryptovault.logging.configure"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "cryptovault.logging.RequestIdFilter"},
        "task": {"()": "cryptovault.logging.TaskFilter"},
        "redact_tokens": {"()": "cryptovault.logging.TokenRedactionFilter"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
            # uvicorn adds an ANSI-coloured copy of some messages as an extra.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id", "task", "redact_tokens"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own defaults (DEFAULT_LOGGING, applied first) print plain text to
        # stderr in DEBUG: their handlers go, the records reach the JSON handler.
        "django": {"handlers": [], "propagate": True},
        "django.server": {"level": "WARNING", "propagate": True},
        # uvicorn (web) sets up its own plain-text handlers before it loads the
        # application; this entry drops them (and resets uvicorn.error and uvicorn.access,
        # children of "uvicorn"), so its lines reach the JSON handler. Its level is set
        # here too: uvicorn's own config leaves "uvicorn" at INFO, and a record passes the
        # root's handler whatever the root's level, so LOG_LEVEL=WARNING still printed a
        # line per WebSocket connection (bench/sse.py). --no-access-log still applies:
        # cryptovault.logging.configure keeps uvicorn.access from propagating then.
        "uvicorn": {"handlers": [], "propagate": True, "level": LOG_LEVEL},
        "celery": {"level": LOG_LEVEL},
    },
}
