"""The pass-through edge: HTTP requests and websockets relayed to a route's upstream as they are.

HTTP bodies stream both ways in bounded chunks (never read whole), redirects are not
followed, bytes are not decompressed and cookies are never stored by the proxy.

Websockets are relayed frame by frame. The upstream is connected first, offering the
client's subprotocols; the client's handshake is answered only after the upstream's, with
the subprotocol the upstream chose (or its refusal status). Keepalive is per hop: each side
answers pings itself and, when `keepalive.ping_interval` is set, pings its peer and drops it
when a pong is missed; a dead hop then closes the other with a close code. Pings are not
forwarded because a ping relayed across two hops cannot tell which hop died. Close frames
are relayed both ways with their code and reason, and the closing side gets the other
side's answering code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from .config import ProxyConfig, Route
from .headers import (
    client_scheme,
    requested_subprotocols,
    response_headers_for_client,
    ssl_for_route,
    upstream_request_headers,
)
from .routing import ResolvedRoute
from .tcp import QuickAck, set_no_delay
from .xsrf import vouch_for_xsrf

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
_WS_CLOSE_TIMEOUT = 10.0  # seconds a peer gets to answer our close frame

# Close codes that must not appear on the wire (RFC 6455 section 7.4.1), and 0 which aiohttp
# reports for a close frame without a code.
_UNSENDABLE_CLOSE_CODES = frozenset({0, 1005, 1006, 1015})
# What a client may need from a refused handshake: where to log in, what cookie to drop.
_REFUSAL_HEADERS_KEPT = frozenset({"location", "set-cookie", "www-authenticate"})


def make_upstream_client(config: ProxyConfig) -> aiohttp.ClientSession:
    """The upstream client the pass-through edge expects.

    Bytes are relayed as they come (no decompression), cookies are never kept (the
    proxy must not mix clients' sessions), the environment's proxy settings are ignored
    and there is no session-wide timeout: per-route timeouts are applied per request.
    """
    del config  # per-route settings (TLS, timeouts) are applied per request
    # No pool limit: every upstream connection serves one client connection, so the
    # listener already bounds them, and a limit would queue requests behind long-lived
    # websockets.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("User-Agent",),
    )


class Passthrough:
    """Relays requests on a resolved route to its upstream."""

    def __init__(self, client: aiohttp.ClientSession, config: ProxyConfig) -> None:
        self.client = client
        self.config = config  # replaced on reload; a request uses the config it started with
        self._relays: set[tuple[web.WebSocketResponse, aiohttp.ClientWebSocketResponse]] = set()

    async def shutdown(self) -> None:
        """Close relayed websockets: upstream first (it starts buffering), then clients (1012)."""
        relays = list(self._relays)
        if relays:
            log.info("closing %d relayed websockets", len(relays))
        await asyncio.gather(*(_close_for_shutdown(c, u) for c, u in relays))

    async def handle(self, request: web.Request, resolved: ResolvedRoute) -> web.StreamResponse:
        """Relay one client request (HTTP or websocket upgrade) to the route's upstream."""
        if is_websocket_upgrade(request):
            return await self._relay_websocket(request, resolved)
        return await self._relay_http(request, resolved)

    # HTTP

    async def _relay_http(
        self, request: web.Request, resolved: ResolvedRoute
    ) -> web.StreamResponse:
        route = resolved.route
        url = resolved.upstream_url_for(query=_raw_query(request))
        trusted = self.config.trusted_proxies
        headers = upstream_request_headers(
            request, resolved, websocket=False, trusted_proxies=trusted
        )
        if route.xsrf_enabled:
            scheme = client_scheme(request, trusted)
            changes = vouch_for_xsrf(request.method, request.headers, scheme)
            if changes:
                for name, value in changes.items():
                    headers[name] = value
        body = _request_body(request) if request.body_exists else None

        try:
            async with asyncio.timeout(_headers_deadline(route)):
                upstream = await self.client.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    ssl=ssl_for_route(route),
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=route.timeouts.connect, sock_connect=None
                    ),
                    # Send exactly the client's headers: no invented defaults.
                    skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type"),
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return await self._failure_response(request, route, exc, "request")

        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(response_headers_for_client(upstream.headers))
            await response.prepare(request)
            if request.method == "HEAD":
                await response.write_eof()
                return response
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK_BYTES):
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Headers are out: the only honest signal left is a cut connection, so the
                # client sees a short body rather than a complete-looking one.
                log.warning("upstream %s broke off its response: %r", url, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response

    async def _failure_response(
        self, request: web.Request, route: Route, exc: BaseException, what: str
    ) -> web.StreamResponse:
        """502 or 504 for an upstream that could not be reached or did not answer."""
        if isinstance(exc, TimeoutError):
            return await self.error_response(
                request, route, 504, "the upstream did not answer in time"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return await self.error_response(
                request, route, 502, f"cannot connect to the upstream: {exc}"
            )
        return await self.error_response(request, route, 502, f"upstream {what} failed: {exc}")

    async def error_response(
        self, request: web.Request, route: Route, status: int, problem: str
    ) -> web.StreamResponse:
        """The proxy's own 502/503/504: the route's error page if configured, else JSON."""
        log.warning("%s %s -> %d: %s", request.method, request.path, status, problem)
        page = route.error_pages.get(status)
        if page is not None:
            try:
                body = await asyncio.to_thread(Path(page).read_bytes)
            except OSError as exc:
                log.error(
                    "error page %s for %d on route %s unreadable: %s",
                    page,
                    status,
                    route.prefix,
                    exc,
                )
            else:
                content_type = mimetypes.guess_type(page)[0] or "text/html"
                return web.Response(status=status, body=body, content_type=content_type)
        payload = {"status": status, "error": problem, "route": route.prefix}
        return web.Response(
            status=status, text=json.dumps(payload), content_type="application/json"
        )

    # WebSocket

    async def _relay_websocket(
        self, request: web.Request, resolved: ResolvedRoute
    ) -> web.StreamResponse:
        route = resolved.route
        max_msg_size = self.config.max_message_bytes_for(route)
        heartbeat = self.config.keepalive.ping_interval or None
        if not web.WebSocketResponse().can_prepare(request).ok:
            return web.json_response(
                {"status": 400, "error": "malformed websocket handshake"}, status=400
            )

        url = resolved.upstream_url_for(query=_raw_query(request))
        try:
            async with asyncio.timeout(_websocket_handshake_deadline(route)):
                upstream = await self.client.ws_connect(
                    url,
                    protocols=requested_subprotocols(request.headers),
                    headers=upstream_request_headers(
                        request,
                        resolved,
                        websocket=True,
                        trusted_proxies=self.config.trusted_proxies,
                    ),
                    autoclose=False,
                    autoping=True,
                    heartbeat=heartbeat,
                    max_msg_size=max_msg_size,
                    ssl=ssl_for_route(route),
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_WS_CLOSE_TIMEOUT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            return _handshake_refusal(exc)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return await self._failure_response(request, route, exc, "websocket")

        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            autoping=True,
            heartbeat=heartbeat,
            max_msg_size=max_msg_size,
            decode_text=False,
            timeout=_WS_CLOSE_TIMEOUT,
        )
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=1001, message=b"client went away during the handshake")
            raise
        set_no_delay(request.transport)
        set_no_delay(upstream)
        relay = (client, upstream)
        self._relays.add(relay)
        try:
            await relay_websocket(client, upstream)
        finally:
            self._relays.discard(relay)
        return client


async def relay_websocket(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    """Pump frames both ways until one side closes, then close the other likewise.

    TCP_QUICKACK is re-armed on the upstream socket after every frame either way:
    jupyter_server never sets TCP_NODELAY, so without it each kernel reply waits ~40 ms for
    our delayed ACK (see proxy/tcp.py).
    """
    quick = QuickAck.for_upstream(upstream)
    # One direction runs in the caller's task: an idle pair then costs one task, not two.
    to_client = asyncio.create_task(_pump(upstream, client, "upstream", quick))
    try:
        await _pump(client, upstream, "client", quick)
        await to_client
    finally:
        to_client.cancel()
        if quick is not None:
            quick.close()
        if not upstream.closed:
            await upstream.close(code=1001, message=b"proxy closed the relay")
        if not client.closed:
            await client.close(code=1001, message=b"proxy closed the relay")


async def _close_for_shutdown(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    await _close(upstream, 1001, "proxy shutting down")
    await _close(client, 1012, "proxy restarting")


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(
    source: WebSocket, sink: WebSocket, source_name: str, quick: QuickAck | None = None
) -> None:
    """Forward frames from `source` to `sink`; on close, carry the close over and finish it."""
    while True:
        msg = await source.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            try:
                await sink.send_frame(data, kind)
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                # The sink is gone; its own pump reports how, so only the source is left.
                await _close(source, 1001, "the other side of the relay went away")
                return
            if quick is not None and not quick.arm():
                quick = None
            continue
        if kind is WSMsgType.CLOSE:
            code = _sendable(msg.data, fallback=1000)
            reason = msg.extra or ""
            answer = await _close(sink, code, reason)
            await _close(source, _sendable(answer, fallback=code), "")
            return
        if kind is WSMsgType.CLOSING:
            return  # our other pump is closing this socket
        # CLOSED or ERROR: the source died without a close handshake (or broke the protocol).
        code = _error_close_code(msg, source_name)
        reason = f"{source_name} connection lost" if kind is WSMsgType.CLOSED else str(msg.data)
        await _close(sink, code, reason[:120])
        return


async def _close(ws: WebSocket, code: int, reason: str) -> int | None:
    """Close `ws` with a code and reason; return the code its peer answered with."""
    if not ws.closed:
        try:
            await ws.close(code=code, message=reason.encode()[:123])
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass
    return ws.close_code


def _sendable(code: Any, *, fallback: int) -> int:
    if not isinstance(code, int) or code in _UNSENDABLE_CLOSE_CODES:
        return fallback
    return code


def _error_close_code(msg: aiohttp.WSMessage, source_name: str) -> int:
    if isinstance(msg.data, aiohttp.WebSocketError):
        # e.g. 1009 message too big, 1007 invalid text: the peer learns why the relay ended.
        return _sendable(msg.data.code, fallback=1011)
    return 1011 if source_name == "upstream" else 1001


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """Whether the request asks to switch to the websocket protocol."""
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def _handshake_refusal(exc: aiohttp.WSServerHandshakeError) -> web.StreamResponse:
    """The upstream's refusal as the client's answer: same status, no fake 101."""
    # A 101 with a bad accept key or upgrade header is a broken upstream, not a refusal.
    status = exc.status if 300 <= exc.status <= 599 else 502
    body = {"status": status, "error": f"the upstream refused the websocket: {exc.message}"}
    response = web.json_response(body, status=status)
    if exc.headers is not None:
        for name, value in exc.headers.items():
            if name.lower() in _REFUSAL_HEADERS_KEPT:
                response.headers.add(name, value)
    return response


def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    """The client's body as a stream, so uploads of any size pass in bounded memory."""
    return request.content.iter_chunked(CHUNK_BYTES)


def _raw_query(request: web.BaseRequest) -> str:
    """The query string exactly as the client encoded it."""
    return request.raw_path.partition("?")[2]


def _headers_deadline(route: Route) -> float | None:
    timeouts = route.timeouts
    return None if timeouts.response is None else timeouts.connect + timeouts.response


def _websocket_handshake_deadline(route: Route) -> float:
    # ws_connect takes no per-request connect timeout, so the whole handshake is bounded.
    timeouts = route.timeouts
    return timeouts.connect + (timeouts.response or timeouts.connect)
