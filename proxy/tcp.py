"""TCP socket options the relays set on their connections (Linux-specific ones guarded)."""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp


def set_no_delay(endpoint: Any) -> None:
    """TCP_NODELAY on a transport or client websocket: small writes leave at once."""
    sock = _socket_of(endpoint)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class QuickAck:
    """Linux TCP_QUICKACK on an upstream socket, re-armed after each read.

    jupyter_server never sets TCP_NODELAY, so its small writes wait for our ACK (Nagle)
    while our delayed ACK waits ~40 ms: acknowledging at once removes that stall. The
    kernel clears quick-ack mode again by itself, hence the re-arm per read. We keep our
    own duplicate of the file descriptor because uvloop's socket wrapper builds a Python
    socket object on every setsockopt call.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def for_upstream(cls, ws: aiohttp.ClientWebSocketResponse) -> QuickAck | None:
        if not hasattr(socket, "TCP_QUICKACK"):
            return None
        wrapped = _socket_of(ws)
        if wrapped is None:
            return None
        try:
            sock = socket.socket(fileno=os.dup(wrapped.fileno()))
        except OSError:
            return None
        quick = cls(sock)
        if not quick.arm():
            quick.close()
            return None
        return quick

    def arm(self) -> bool:
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def _socket_of(endpoint: Any) -> Any:
    """The socket under a transport or websocket (asyncio wraps it; setsockopt still works)."""
    sock = endpoint.get_extra_info("socket") if endpoint is not None else None
    return sock if hasattr(sock, "setsockopt") else None
