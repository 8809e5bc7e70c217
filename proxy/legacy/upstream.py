"""Opening a legacy session's upstream `/channels` websocket, and classifying failures."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"


class UpstreamRefused(Exception):
    """The upstream answered and said no (unknown kernel, bad credentials): retrying won't help."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or failed; a later attempt may succeed."""


@dataclass(slots=True)
class UpstreamTarget:
    """Everything needed to (re)open one session's upstream websocket."""

    url: URL
    headers: CIMultiDict[str]
    ssl: object
    max_msg_size: int
    heartbeat: float | None
    connect_timeout: float


async def open_upstream(
    client: aiohttp.ClientSession, target: UpstreamTarget
) -> aiohttp.ClientWebSocketResponse:
    """Connect, offering the v1 subprotocol; the server may still choose plain JSON framing."""
    try:
        ws = await asyncio.wait_for(
            client.ws_connect(
                target.url,
                protocols=(V1_SUBPROTOCOL,),
                headers=target.headers,
                max_msg_size=target.max_msg_size,
                heartbeat=target.heartbeat,
                compress=0,
                autoclose=False,
                ssl=target.ssl,  # type: ignore[arg-type]
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            ),
            timeout=target.connect_timeout,
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status in (401, 403):
            raise UpstreamRefused(
                exc.status, f"upstream refused credentials ({exc.status})"
            ) from None
        if exc.status == 404:
            raise UpstreamRefused(404, "kernel not found upstream (404)") from None
        if 400 <= exc.status < 500:
            raise UpstreamRefused(
                exc.status, f"upstream refused the websocket ({exc.status})"
            ) from None
        raise UpstreamUnavailable(f"upstream answered {exc.status}") from None
    except TimeoutError:
        raise UpstreamUnavailable("upstream connect timed out") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"upstream unreachable: {exc}") from None
    tune_upstream_socket(ws)
    return ws


def tune_upstream_socket(ws: aiohttp.ClientWebSocketResponse) -> None:
    """TCP_NODELAY for our small requests."""
    sock = _socket_of(ws)
    if sock is None:
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


def _socket_of(ws: aiohttp.ClientWebSocketResponse) -> Any:
    """The transport's socket (asyncio wraps it; setsockopt still works)."""
    sock = ws.get_extra_info("socket")
    return sock if hasattr(sock, "setsockopt") else None
