import pytest
from django.test import RequestFactory, override_settings

from cryptovault.net import client_ip

rf = RequestFactory()


def request_from(peer: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": peer}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return rf.get("/", **extra)


def test_direct_client_address_is_used():
    assert client_ip(request_from("203.0.113.7")) == "203.0.113.7"


def test_forwarded_header_from_untrusted_peer_is_ignored():
    assert client_ip(request_from("203.0.113.7", "1.2.3.4")) == "203.0.113.7"


@override_settings(TRUSTED_PROXIES=["10.0.0.0/8"])
@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ("198.51.100.9", "198.51.100.9"),
        ("6.6.6.6, 198.51.100.9", "198.51.100.9"),  # a client-sent prefix is not trusted
        ("198.51.100.9, 10.1.2.3", "198.51.100.9"),  # an inner trusted proxy is skipped
        ("garbage", "10.0.0.5"),
    ],
)
def test_forwarded_header_from_trusted_proxy(forwarded, expected):
    assert client_ip(request_from("10.0.0.5", forwarded)) == expected
