"""A plain aiohttp reverse proxy on uvloop that relays websocket frames without parsing them.

It is the floor for any aiohttp proxy: frames are neither decoded as UTF-8 nor re-encoded,
just handed from one socket to the other with their opcode. Plain HTTP requests are
passed through too, so clients that check `GET /api/kernels/<id>` work.

CLI: `python -m bench.plain_relay --upstream http://127.0.0.1:8899 --port 8897`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
from aiohttp import WSMsgType, web

from bench.stub_upstream import loop_factory

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Accept",
    )
)


async def _pipe(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    while True:
        msg = await source.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            await sink.send_frame(msg.data, kind)
        else:
            return


class PlainRelay:
    """The relay app bound to one upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.http: aiohttp.ClientSession | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.app.on_startup.append(self._open)
        self.app.on_cleanup.append(self._close)

    async def _open(self, app: web.Application) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
        )

    async def _close(self, app: web.Application) -> None:
        if self.http is not None:
            await self.http.close()

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        url = self.upstream + request.raw_path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, url)
        assert self.http is not None
        async with self.http.request(
            request.method,
            url,
            headers=self._headers(request),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _websocket(self, request: web.Request, url: str) -> web.StreamResponse:
        assert self.http is not None
        offered = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        try:
            upstream = await self.http.ws_connect(
                url.replace("http://", "ws://", 1),
                headers=self._headers(request),
                protocols=offered,
                compress=0,
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES,
                decode_text=False,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise web.HTTPBadGateway(text=f"upstream refused the websocket: {exc.status}") from exc
        except aiohttp.ClientError as exc:
            raise web.HTTPBadGateway(text=f"upstream unreachable: {exc}") from exc
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            compress=False,
            max_msg_size=MAX_MESSAGE_BYTES,
            decode_text=False,
        )
        try:
            await client.prepare(request)
            tasks = [
                asyncio.ensure_future(_pipe(client, upstream)),
                asyncio.ensure_future(_pipe(upstream, client)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        finally:
            await upstream.close()
            await client.close()
        return client


async def start_relay(upstream: str, port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the relay on 127.0.0.1; returns its runner (for cleanup) and port."""
    runner = web.AppRunner(PlainRelay(upstream).app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _serve(upstream: str, port: int) -> None:
    runner, bound = await start_relay(upstream, port)
    print(f"plain relay listening on http://127.0.0.1:{bound} -> {upstream}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT to relay to")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=None if args.no_uvloop else loop_factory()) as runner:
        runner.run(_serve(args.upstream, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
