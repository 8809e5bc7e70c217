"""The aiohttp edge of a legacy channel socket: accept, read the handshake, join a session."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from ..routing import LegacyTarget, ResolvedRoute
from ..tcp import set_no_delay
from ..wire.errors import HandshakeError
from ..wire.handshake import Handshake, parse_handshake
from .client_socket import LegacySocket
from .closing import close_legacy_socket
from .registry import SessionRefused

if TYPE_CHECKING:
    from ..app import ProxyServer

log = logging.getLogger("proxy.legacy")

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009


async def handle_legacy_socket(
    server: ProxyServer, request: web.Request, resolved: ResolvedRoute, target: LegacyTarget
) -> web.StreamResponse:
    """Serve one of the three legacy sockets for its whole life."""
    config = server.config
    interval = config.keepalive.ping_interval
    ws = web.WebSocketResponse(
        max_msg_size=config.max_message_bytes_for(resolved.route),
        heartbeat=interval or None,
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    set_no_delay(request.transport)
    metrics = server.metrics
    try:
        handshake = await _read_handshake(ws, config.limits.handshake_timeout)
    except HandshakeError as exc:
        metrics.handshake_failures.labels(_handshake_label(exc.reason)).inc()
        log.warning(
            "handshake refused kernel=%s channel=%s peer=%s: %s",
            target.kernel_id,
            target.channel,
            request.remote,
            exc.reason,
        )
        await close_legacy_socket(ws, exc.close_code, exc.reason, "clean")
        return ws
    sock = LegacySocket(ws, request)
    try:
        session = server.registry.attach(request, resolved, target, handshake, sock)
    except SessionRefused as exc:
        metrics.handshake_failures.labels("refused").inc()
        log.warning("session refused kernel=%s: %s", target.kernel_id, exc.reason)
        await close_legacy_socket(ws, exc.code, exc.reason, "clean")
        return ws
    try:
        while not session.closed:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                await session.from_client(target.channel, msg.data)
            elif msg.type is WSMsgType.BINARY:
                await session.reject_client_frame(
                    CLOSE_UNSUPPORTED_DATA, "binary frames are not part of the legacy protocol"
                )
            elif msg.type is WSMsgType.ERROR and _close_code_of(msg.data) == CLOSE_TOO_BIG:
                # aiohttp has already closed this socket with 1009 (no reason allowed there);
                # the session's other sockets get the reason.
                limit = config.max_message_bytes_for(resolved.route)
                await session.reject_client_frame(
                    CLOSE_TOO_BIG, f"message larger than limits.max_message_bytes ({limit} bytes)"
                )
                break
            else:
                break
    finally:
        session.detach(target.channel, sock)
    if not ws.closed:
        await sock.close(1000, "session closed", "clean")
    return ws


async def _read_handshake(ws: web.WebSocketResponse, timeout: float) -> Handshake:
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        raise HandshakeError(f"no session handshake within {timeout:g}s") from None
    if msg.type is WSMsgType.BINARY:
        raise HandshakeError("handshake must be a text frame '<session_id>:<cookies>'")
    if msg.type is not WSMsgType.TEXT:
        raise HandshakeError("socket closed before the session handshake")
    data = msg.data
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise HandshakeError("handshake is not valid UTF-8") from None
    return parse_handshake(data)


def _close_code_of(error: object) -> int | None:
    """The close code aiohttp attached to a protocol error (e.g. 1009 for an oversized frame)."""
    code = getattr(error, "code", None)
    return int(code) if isinstance(code, int) else None


def _handshake_label(reason: str) -> str:
    if reason.startswith("no session handshake"):
        return "timeout"
    return "malformed"


__all__ = ["handle_legacy_socket"]
