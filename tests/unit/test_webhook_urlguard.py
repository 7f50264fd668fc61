"""The URL guard: what a webhook may be sent to, at registration and on the connected
address at delivery (DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks.errors import InvalidWebhookURLError, UnsafeTargetError
from app.webhooks.urlguard import address_problem, check_peer, check_url, guarded_session

REFUSED_ALWAYS_PRIVATE = [  # refused unless AIW_WEBHOOK_ALLOW_PRIVATE
    ("127.0.0.1", "loopback"),
    ("127.10.20.30", "loopback"),
    ("[::1]", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.10", "private"),
    ("[fd12:3456:789a::1]", "private"),  # IPv6 ULA
    ("[fc00::1]", "private"),
    ("169.254.10.20", "link-local"),
    ("[fe80::1]", "link-local"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "not a publicly routable"),  # carrier-grade NAT
    ("[::ffff:10.0.0.1]", "private"),  # IPv4-mapped
    ("[::ffff:127.0.0.1]", "loopback"),
    ("[2002:7f00:1::]", "loopback"),  # 6to4 of 127.0.0.1
    ("[64:ff9b::a00:1]", "private"),  # NAT64 of 10.0.0.1
]
REFUSED_EVEN_WITH_SWITCH = [
    ("169.254.169.254", "metadata"),  # AWS, GCP, Azure, ...
    ("[fd00:ec2::254]", "metadata"),  # AWS IPv6
    ("100.100.100.200", "metadata"),  # Alibaba
    ("metadata.google.internal", "metadata"),
    ("224.0.0.1", "multicast"),
    ("[ff02::1]", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("[::]", "unspecified"),
]


@pytest.mark.parametrize(("host", "why"), REFUSED_ALWAYS_PRIVATE)
def test_each_private_class_is_refused_naming_the_switch(host: str, why: str) -> None:
    with pytest.raises(UnsafeTargetError, match=why) as info:
        check_url(f"https://{host}/hooks")
    assert "set AIW_WEBHOOK_ALLOW_PRIVATE=true" in str(info.value)


@pytest.mark.parametrize(("host", "why"), REFUSED_EVEN_WITH_SWITCH)
def test_what_the_switch_cannot_open_does_not_suggest_it(host: str, why: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(UnsafeTargetError, match=why) as info:
            check_url(f"https://{host}/hooks", allow_private=allow_private)
        assert "set AIW_WEBHOOK_ALLOW_PRIVATE" not in str(info.value)
        assert "refused even with AIW_WEBHOOK_ALLOW_PRIVATE" in str(info.value)


@pytest.mark.parametrize(("host", "why"), REFUSED_ALWAYS_PRIVATE)
def test_private_classes_are_allowed_with_the_switch(host: str, why: str) -> None:
    url = f"http://{host}:8080/hooks"
    assert check_url(url, allow_private=True) == url


@pytest.mark.parametrize(("host", "why"), REFUSED_EVEN_WITH_SWITCH)
def test_metadata_multicast_unspecified_stay_refused_with_the_switch(host: str, why: str) -> None:
    with pytest.raises(UnsafeTargetError, match=why):
        check_url(f"http://{host}/", allow_private=True)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "https:// or http://"),
        ("file:///etc/passwd", "https:// or http://"),
        ("javascript:alert(1)", "https:// or http://"),
        ("example.com/hooks", "https:// or http://"),
        ("https://user:pw@example.com/hooks", "credentials"),
        ("https:///nohost", "needs a host"),
        ("https://example.com:99999/", "malformed"),
        ("https://exa mple.com/", "white space"),
        ("", "non-empty"),
        ("https://example.com/" + "x" * 2100, "at most"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidWebhookURLError, match=message):
        check_url(url, resolve=False)


def test_localhost_names_are_refused_without_resolving() -> None:
    for url in ("http://localhost:9000/", "http://LOCALHOST./", "http://api.localhost/"):
        with pytest.raises(UnsafeTargetError, match="loopback host name"):
            check_url(url)
    assert check_url("http://localhost:9000/", allow_private=True)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolved as the test says; other names as usual."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            out = []
            for address in answers[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
                out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return out
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_a_name_resolving_to_a_private_address_is_refused(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["intranet.example"] = ["10.1.2.3"]
    fake_dns["mixed.example"] = ["93.184.216.34", "127.0.0.1"]  # one bad answer is enough
    fake_dns["public.example"] = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    with pytest.raises(UnsafeTargetError, match=r"10\.1\.2\.3 is a private address"):
        check_url("https://intranet.example/hooks")
    with pytest.raises(UnsafeTargetError, match=r"127\.0\.0\.1 is a loopback address"):
        check_url("https://mixed.example/hooks")
    assert check_url("https://public.example/hooks")


def test_the_real_resolver_is_used_for_localhost_style_names() -> None:
    # "localhost" resolves to loopback on every machine: refused by resolution too.
    with pytest.raises(UnsafeTargetError, match="loopback"):
        check_url("http://localhost/", allow_private=False)
    with pytest.raises(InvalidWebhookURLError, match="does not resolve"):
        check_url("https://no-such-host.invalid/hooks")


@pytest.fixture
def local_receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(secret="whsec_" + "A" * 32).start()
    yield server
    server.stop()


def test_dns_rebinding_cannot_reach_a_refused_address(
    fake_dns: dict[str, list[str]], local_receiver: WebhookReceiver
) -> None:
    # Registration sees a public address ...
    fake_dns["rebind.example"] = ["93.184.216.34"]
    url = f"http://rebind.example:{local_receiver.port}/hooks"
    assert check_url(url) == url
    # ... and at delivery the name points at loopback: the guarded session refuses to
    # connect, and nothing reaches the receiver.
    fake_dns["rebind.example"] = ["127.0.0.1"]
    session = guarded_session(allow_private=False)
    with pytest.raises(UnsafeTargetError, match="loopback"):
        session.post(url, data=b"{}", timeout=5, allow_redirects=False)
    assert local_receiver.requests == []
    # The same delivery with private targets allowed on purpose goes through.
    allowed = guarded_session(allow_private=True)
    response = allowed.post(url, data=b"{}", timeout=5, allow_redirects=False)
    assert response.status_code == 400  # reached the receiver (which wants a signature)
    assert len(local_receiver.requests) == 1


def test_the_connected_peer_is_checked(local_receiver: WebhookReceiver) -> None:
    sock = socket.create_connection(("127.0.0.1", local_receiver.port), timeout=5)
    try:
        with pytest.raises(UnsafeTargetError, match=r"127\.0\.0\.1 is a loopback address"):
            check_peer(sock, "looks-public.example", allow_private=False)
        check_peer(sock, "looks-public.example", allow_private=True)
    finally:
        sock.close()


def test_guarded_session_ignores_proxies_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, local_receiver: WebhookReceiver
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("NO_PROXY", "")
    session = guarded_session(allow_private=True)
    response = session.post(local_receiver.url, data=b"{}", timeout=5)
    assert response.status_code == 400 and len(local_receiver.requests) == 1


def test_connection_refused_is_a_requests_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = guarded_session(allow_private=True)
    with pytest.raises(requests.ConnectionError):
        session.post(f"http://127.0.0.1:{port}/", data=b"{}", timeout=2)
