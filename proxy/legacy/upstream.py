"""Opening a legacy session's upstream `/channels` websocket, and classifying failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..tcp import set_no_delay

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
    set_no_delay(ws)
    return ws
