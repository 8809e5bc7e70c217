"""Closing a legacy client socket so that the old frontend does the right thing next."""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

# RFC 6455 allows 123 bytes of reason in a close frame.
_MAX_REASON = 123


def close_reason_bytes(reason: str) -> bytes:
    """The reason as it fits in a close frame, cut on a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= _MAX_REASON:
        return data
    return data[:_MAX_REASON].decode("utf-8", "ignore").encode("utf-8")


async def close_legacy_socket(
    ws: web.WebSocketResponse, code: int, reason: str, style: str, timeout: float = 5.0
) -> None:
    """Send a close frame with code and reason; with style "reset", end the TCP stream with RST.

    IPython 2.x kernel.js reconnects only when the close event has ``wasClean == false``.
    Browsers report a close as clean when the close handshake completed and the connection
    then ended with FIN; after an RST they still report the code and reason they received,
    but ``wasClean`` is false. aiohttp waits for the client's close frame before closing the
    transport, so our close frame has arrived by the time the RST is sent.
    """
    if ws.closed:
        return
    if style == "reset":
        _linger_zero(ws)
    try:
        await asyncio.wait_for(ws.close(code=code, message=close_reason_bytes(reason)), timeout)
    except (TimeoutError, ConnectionError, RuntimeError):
        transport = ws._req.transport if ws._req is not None else None
        if transport is not None:
            transport.abort()


def _linger_zero(ws: web.WebSocketResponse) -> None:
    req = ws._req
    transport = req.transport if req is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
