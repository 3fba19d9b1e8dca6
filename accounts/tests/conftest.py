import pytest

from accounts.tests.factories import PASSWORD, user_create
from cryptovault.celery import app


@pytest.fixture(autouse=True)
def _celery_inline(request):
    """Tasks run inline (the real task code, synchronously) unless the test runs a real
    worker; on_commit callbacks still decide when they are enqueued."""
    if "celery_worker" in request.fixturenames:
        yield
        return
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager = False
    app.conf.task_eager_propagates = False


@pytest.fixture(autouse=True)
def _rsa_key(settings, rsa_pem):
    settings.RSA_PRIVATE_KEY = rsa_pem


class Api:
    """A JSON client for /api/v1/auth/ that runs on_commit work (emails) like a real
    request would, from a chosen client address."""

    def __init__(self, client, capture):
        self.client = client
        self.capture = capture
        self.ip = "203.0.113.10"

    def _call(self, method, path, data=None, token=None, ip=None, **extra):
        if token:
            extra["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        extra.setdefault("HTTP_USER_AGENT", "pytest-agent/1.0")
        url = path if path.startswith("/") else f"/api/v1/auth/{path}"
        with self.capture(execute=True):
            return getattr(self.client, method)(
                url, data, format="json", REMOTE_ADDR=ip or self.ip, **extra
            )

    def get(self, path, **kw):
        return self._call("get", path, **kw)

    def post(self, path, data=None, **kw):
        return self._call("post", path, data, **kw)

    def patch(self, path, data=None, **kw):
        return self._call("patch", path, data, **kw)

    def delete(self, path, **kw):
        return self._call("delete", path, **kw)

    def login(self, email, password=PASSWORD, **kw):
        response = self.post("login", {"email": email, "password": password}, **kw)
        assert response.status_code == 200, response.content
        return response.json()


@pytest.fixture
def api(api_client, django_capture_on_commit_callbacks):
    return Api(api_client, django_capture_on_commit_callbacks)


@pytest.fixture
def user(db):
    return user_create()
