"""Which URLs a webhook may go to, checked at registration and again at delivery.

Refused (``UnsafeTargetError``) unless ``AIW_WEBHOOK_ALLOW_PRIVATE=true``: a
host that is, or resolves to, a loopback, private (RFC 1918, IPv6 ULA, CGNAT),
link-local, reserved or otherwise not publicly routable address, and the names
``localhost`` / ``*.localhost``. Refused even with the switch, because no real
receiver lives there: cloud metadata addresses and names (169.254.169.254,
fd00:ec2::254, metadata.google.internal, ...), multicast and unspecified
(0.0.0.0, ::) addresses. IPv4 addresses carried inside IPv6 ones (mapped,
6to4, NAT64, Teredo) are judged by the IPv4 address. A name is refused if *any*
of its addresses is.

At delivery the check is made on the address actually connected to:
``guarded_session()`` is a ``requests.Session`` whose connections resolve the
host themselves, check every address, connect only to an allowed one, and
check ``getpeername()`` of the connected socket again. A DNS answer that
changes between registration and delivery (DNS rebinding) therefore cannot
reach a refused address. TLS still verifies the certificate against the host
name (SNI and ``Host`` keep the name). The session does not read proxy
settings from the environment (a proxy would hide the real target), sends no
cookies, and never follows redirects (``allow_redirects=False`` at the call).
"""

from __future__ import annotations

import ipaddress
import socket
from http.cookiejar import DefaultCookiePolicy
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from app.webhooks.errors import InvalidWebhookURLError, UnsafeTargetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

# Instance metadata services: AWS (IPv4/IPv6, ECS task metadata, DNS), GCP, Azure,
# Oracle, Alibaba, OpenStack and DigitalOcean (169.254.169.254 as well).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.169.253",
        "169.254.170.2",
        "169.254.169.123",
        "fd00:ec2::254",
        "fd00:ec2::253",
        "fd00:ec2::123",
        "100.100.100.200",
        "192.0.0.192",
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a webhook must not connect to ``ip`` (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        inner = _embedded_ipv4(ip)
        if inner is not None:  # judged by the IPv4 address it reaches
            problem = address_problem(inner, allow_private=allow_private)
            return None if problem is None else f"{problem} (inside {ip})"
        if ip.teredo is not None:  # 2001::/32, itself not public: judged by both
            problem = address_problem(ip.teredo[1], allow_private=allow_private)
            if problem is not None:
                return f"{problem} (inside {ip})"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a publicly routable address"
    return None


def _host_name_problem(host: str, *, allow_private: bool) -> str | None:
    name = host.rstrip(".").lower()
    if name in METADATA_HOSTS:
        return "a cloud metadata host name"
    if not allow_private and (name == "localhost" or name.endswith(".localhost")):
        return "a loopback host name"
    return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def check_url(url: object, *, allow_private: bool = False, resolve: bool = True) -> str:
    """Check a webhook URL (registration); returns it. Resolves the host name and
    refuses it if any address is refused, or if it does not resolve at all."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidWebhookURLError("a webhook URL must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookURLError(f"a webhook URL has at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookURLError(f"malformed webhook URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidWebhookURLError(
            f"a webhook URL must start with https:// or http://, not {parts.scheme or 'nothing'!r}"
        )
    if "@" in parts.netloc:
        raise InvalidWebhookURLError(
            "a webhook URL must not carry credentials (user:password@): deliveries are "
            "signed, and the URL is stored and shown in clear"
        )
    host = parts.hostname
    if not host:
        raise InvalidWebhookURLError("a webhook URL needs a host")
    if any(c.isspace() for c in url):
        raise InvalidWebhookURLError("a webhook URL must not contain white space")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        problem = address_problem(literal, allow_private=allow_private)
        if problem is not None:
            raise UnsafeTargetError(host, [(literal, problem)])
        return url
    try:
        host.encode("idna")
    except UnicodeError:
        raise InvalidWebhookURLError(f"malformed host name {host!r}") from None
    problem = _host_name_problem(host, allow_private=allow_private)
    if problem is not None:
        raise UnsafeTargetError(host, [(None, problem)])
    if resolve:
        try:
            addresses = _resolve(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise InvalidWebhookURLError(
                f"the webhook host {host!r} does not resolve ({exc})"
            ) from None
        refused: list[tuple[IPAddress | None, str]] = [
            (ip, p)
            for ip in addresses
            if (p := address_problem(ip, allow_private=allow_private)) is not None
        ]
        if refused:
            raise UnsafeTargetError(host, refused)
    return url


def guarded_connect(
    host: str,
    port: int,
    timeout: Any,
    *,
    allow_private: bool,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
    default_timeout: Any = None,
) -> socket.socket:
    """Resolve ``host``, refuse it if any address is refused, connect to an allowed
    address, and confirm the connected peer. ``socket.gaierror`` / ``OSError`` as
    ``socket.create_connection`` raises them; ``UnsafeTargetError`` when refused."""
    host = host.strip("[]")
    problem = _host_name_problem(host, allow_private=allow_private)
    if problem is not None:
        raise UnsafeTargetError(host, [(None, problem)])
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    refused: list[tuple[IPAddress | None, str]] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        why = address_problem(ip, allow_private=allow_private)
        if why is not None:
            refused.append((ip, why))
    if refused:
        raise UnsafeTargetError(host, refused)
    error: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not default_timeout:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            check_peer(sock, host, allow_private=allow_private)
            return sock
        except UnsafeTargetError:
            sock.close()
            raise
        except OSError as exc:
            error = exc
            sock.close()
    if error is not None:
        raise error
    raise OSError(f"no address found for {host!r}")


def check_peer(sock: socket.socket, host: str, *, allow_private: bool) -> None:
    """Refuse a connected socket whose peer address is refused."""
    peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
    why = address_problem(peer, allow_private=allow_private)
    if why is not None:
        raise UnsafeTargetError(host, [(peer, why)])


class _GuardedConnectionMixin:
    """Replaces urllib3's ``_new_conn`` with ``guarded_connect`` (same error mapping)."""

    allow_private: ClassVar[bool] = False

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        try:
            return guarded_connect(
                conn._dns_host,
                conn.port,
                conn.timeout,
                allow_private=self.allow_private,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
                default_timeout=_DEFAULT_TIMEOUT,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


def _pool_classes(allow_private: bool) -> dict[str, type[HTTPConnectionPool]]:
    http_conn = type(
        "GuardedHTTPConnection",
        (_GuardedConnectionMixin, HTTPConnection),
        {"allow_private": allow_private},
    )
    https_conn = type(
        "GuardedHTTPSConnection",
        (_GuardedConnectionMixin, HTTPSConnection),
        {"allow_private": allow_private},
    )
    http_pool = type(
        "GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}
    )
    https_pool = type(
        "GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
    )
    return {"http": http_pool, "https": https_pool}


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose every new connection goes through ``guarded_connect``."""

    def __init__(self, *, allow_private: bool, pool_maxsize: int = 10) -> None:
        self._allow_private = allow_private
        super().__init__(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._allow_private)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidWebhookURLError("webhook deliveries do not go through proxies")


def guarded_session(*, allow_private: bool, pool_maxsize: int = 10) -> requests.Session:
    """A ``requests.Session`` for deliveries (see the module docstring)."""
    session = requests.Session()
    session.trust_env = False  # no proxies, no .netrc from the environment
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # accept no cookie
    adapter = GuardedAdapter(allow_private=allow_private, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
