"""Header rules of the pass-through edge: what crosses the proxy, what is added, TLS per route.

Pure functions over header multidicts, shared by the HTTP relay, the websocket relay and the
legacy sessions' upstream websocket.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Sequence
from functools import lru_cache

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from .config import Route
from .routing import ResolvedRoute, upstream_host

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# The proxy answers `Expect: 100-continue` itself before it reads the body.
_ANSWERED_BY_PROXY: frozenset[str] = frozenset({"expect"})

# The websocket handshake is made afresh on each hop; subprotocols travel via
# ws_connect(protocols=...) so the upstream's choice reaches the client unchanged.
WEBSOCKET_HANDSHAKE: frozenset[str] = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)

FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_PROTO = "X-Forwarded-Proto"
FORWARDED_HOST = "X-Forwarded-Host"


def connection_tokens(headers: MultiMapping[str]) -> set[str]:
    """Header names listed in `Connection` (lowercase): hop-by-hop for this message only."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def _is_hop_by_hop(name: str, listed: set[str]) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("proxy-") or lower in listed


def _without(headers: MultiMapping[str], dropped: Iterable[str]) -> CIMultiDict[str]:
    listed = connection_tokens(headers)
    drop = {name.lower() for name in dropped}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if _is_hop_by_hop(name, listed) or name.lower() in drop:
            continue
        out.add(name, value)
    return out


def client_scheme(request: web.BaseRequest, trusted_proxies: Sequence[str] = ()) -> str:
    """The scheme the client used: the connection's, or what a trusted front proxy says."""
    if trusted_proxies and is_trusted_peer(request.remote, tuple(trusted_proxies)):
        claimed = request.headers.get(FORWARDED_PROTO, "").split(",")[0].strip().lower()
        if claimed in ("http", "https"):
            return claimed
    return request.scheme


def is_trusted_peer(peer: str | None, trusted_proxies: tuple[str, ...]) -> bool:
    """Whether the connection comes from one of the configured front proxies."""
    if not peer or not trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(trusted_proxies))


@lru_cache(maxsize=16)
def _networks(
    entries: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def upstream_request_headers(
    request: web.BaseRequest,
    resolved: ResolvedRoute,
    *,
    websocket: bool,
    trusted_proxies: Sequence[str] = (),
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request on `resolved`.

    Copies the client's headers (Origin, Cookie and Authorization as sent) minus hop-by-hop
    ones and, for websockets, minus the handshake headers; keeps or rewrites Host per route;
    adds X-Forwarded-*; then applies the route's `request_headers.remove` and `.set`.
    """
    route = resolved.route
    dropped = _ANSWERED_BY_PROXY | (WEBSOCKET_HANDSHAKE if websocket else frozenset())
    headers = _without(request.headers, dropped)

    client_host = request.headers.get("Host")
    if not route.preserve_host or client_host is None:
        headers["Host"] = upstream_host(resolved.upstream)

    # X-Forwarded-For is a chain: earlier proxies' entries stay, we add the peer we saw.
    # Proto and Host describe the client; only a trusted front proxy may state them.
    peer = request.remote
    if peer:
        earlier = ", ".join(headers.getall(FORWARDED_FOR, ()))
        headers.popall(FORWARDED_FOR, None)
        headers[FORWARDED_FOR] = f"{earlier}, {peer}" if earlier else peer
    headers[FORWARDED_PROTO] = client_scheme(request, trusted_proxies)
    trusted = is_trusted_peer(peer, tuple(trusted_proxies))
    claimed_host = request.headers.get(FORWARDED_HOST) if trusted else None
    if claimed_host:
        headers[FORWARDED_HOST] = claimed_host
    elif client_host is not None:
        headers[FORWARDED_HOST] = client_host
    else:
        headers.popall(FORWARDED_HOST, None)

    for name in route.request_headers.remove:
        headers.popall(name, None)
    for name, value in route.request_headers.set.items():
        headers[name] = value
    return headers


def response_headers_for_client(
    upstream_headers: MultiMapping[str] | CIMultiDictProxy[str],
) -> CIMultiDict[str]:
    """The upstream response's headers as the client should get them.

    The body is relayed byte for byte without decompression, so Content-Length and
    Content-Encoding stay true and are kept; Transfer-Encoding is hop-by-hop and the
    proxy re-frames the body itself. Repeated headers (Set-Cookie) keep every value.
    """
    return _without(upstream_headers, ())


def requested_subprotocols(headers: MultiMapping[str]) -> list[str]:
    """The client's Sec-WebSocket-Protocol offer, in its order of preference."""
    offered: list[str] = []
    for value in headers.getall("Sec-WebSocket-Protocol", ()):
        offered.extend(proto.strip() for proto in value.split(",") if proto.strip())
    return offered


def ssl_for_route(route: Route) -> ssl.SSLContext | bool:
    """The `ssl=` argument for upstream connections of `route`.

    False skips certificate checks; a CA bundle yields a (cached) context trusting it;
    otherwise True lets aiohttp verify against the system store.
    """
    if not route.tls.verify:
        return False
    if route.tls.ca_bundle:
        return _context_for_bundle(route.tls.ca_bundle)
    return True


@lru_cache(maxsize=32)
def _context_for_bundle(ca_bundle: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle)
