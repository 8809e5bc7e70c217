"""The pass-through edge against real upstreams: jupyter_server + ipykernel and aiohttp servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jupyter_server
import pytest
from aiohttp import WSMsgType, web
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_msg_to_ws_v1,
)
from yarl import URL

from proxy.config import config_from_dict
from proxy.passthrough import Passthrough, make_upstream_client
from proxy.routing import RouteTable
from tests.support.servers import JupyterServer, free_port, proxy_config
from tests.support.servers import start_proxy as start_proxy_process

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MiB = 1024 * 1024
PASSTHROUGH = web.AppKey("passthrough", Passthrough)
LAST_CLOSE = web.AppKey("last_close", list[tuple[int | None, str | None]])


# Servers


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def proxy_app(config: dict[str, Any]) -> web.Application:
    """The minimal public app: every path resolved by the route table and passed through."""
    parsed = config_from_dict(config)
    table = RouteTable(list(parsed.routes))
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        resolved = table.match(request.raw_path.split("?")[0])
        if resolved is None:
            raise web.HTTPNotFound()
        return await request.app[PASSTHROUGH].handle(request, resolved)

    async def client_lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = make_upstream_client(parsed)
        app[PASSTHROUGH] = Passthrough(client, parsed)
        yield
        await client.close()

    app.cleanup_ctx.append(client_lifecycle)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    """Start in-process proxies from route dicts; returns each one's base URL."""
    runners: list[web.AppRunner] = []

    async def start(*routes: dict[str, Any], **config: Any) -> str:
        app = proxy_app({"routes": list(routes), **config})
        runner, url = await serve(app)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


def echo_app() -> web.Application:
    """An upstream that reports what reached it and answers with chosen quirks."""

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            },
            headers={
                "Connection": "X-Upstream-Hop",
                "X-Upstream-Hop": "dropped",
                "Keep-Alive": "timeout=5",
                "X-Upstream-Kept": "kept",
            },
        )

    async def cookies(request: web.Request) -> web.StreamResponse:
        response = web.Response(status=201, text="made")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        return response

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(MiB)})
        await response.prepare(request)
        await response.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()  # dies mid-body
        return response

    async def teapot(request: web.Request) -> web.StreamResponse:
        return web.Response(status=418, text="short and stout")

    async def websocket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=64 * MiB)
        await ws.prepare(request)
        reason = None
        for _ in range(1_000):
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close "):
                    _, code, reason = msg.data.split(" ", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            else:
                reason = msg.extra if msg.type is WSMsgType.CLOSE else None
                break
        request.app[LAST_CLOSE].append((ws.close_code, reason))
        return ws

    app = web.Application(client_max_size=64 * MiB)
    app[LAST_CLOSE] = []
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/teapot", teapot)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/ws", websocket)
    return app


async def wait_for_closes(app: web.Application, count: int) -> None:
    """Let the echo upstream's handlers record `count` closes (bounded)."""
    for _ in range(200):
        if len(app[LAST_CLOSE]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"upstream saw {app[LAST_CLOSE]}, expected {count} closes")


@pytest.fixture
async def echo_upstream() -> AsyncIterator[tuple[str, web.Application]]:
    app = echo_app()
    runner, url = await serve(app)
    yield url, app
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
    ) as session:
        yield session


# HTTP against jupyter_server


async def test_rest_api_methods_with_token(
    jupyter: JupyterServer, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    base = await start_proxy({"prefix": "/", "upstream": jupyter.url})
    auth = {"Authorization": f"token {jupyter.token}"}

    async with http.get(f"{base}/api/contents", headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["type"] == "directory"

    async with http.post(
        f"{base}/api/contents", headers=auth, json={"type": "file", "ext": ".txt"}
    ) as resp:
        assert resp.status == 201
        created = (await resp.json())["path"]

    model = {"type": "file", "format": "text", "content": "through the proxy"}
    async with http.put(f"{base}/api/contents/note.txt", headers=auth, json=model) as resp:
        assert resp.status == 201

    async with http.patch(
        f"{base}/api/contents/note.txt", headers=auth, json={"path": "renamed.txt"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["path"] == "renamed.txt"

    async with http.get(f"{base}/api/contents/renamed.txt?content=1", headers=auth) as resp:
        assert resp.status == 200
        assert (await resp.json())["content"] == "through the proxy"
    assert ((jupyter.base / "root") / "renamed.txt").read_text() == "through the proxy"

    for path in ("renamed.txt", created):
        async with http.delete(f"{base}/api/contents/{path}", headers=auth) as resp:
            assert resp.status == 204
    assert not ((jupyter.base / "root") / "renamed.txt").exists()

    async with http.get(f"{base}/api/contents/missing.txt", headers=auth) as resp:
        assert resp.status == 404


async def test_static_prefix_maps_onto_upstream_static(
    jupyter: JupyterServer, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    base = await start_proxy(
        {"prefix": "/static/ipython/", "upstream": f"{jupyter.url}/static/"},
        {"prefix": "/", "upstream": jupyter.url},
    )
    on_disk = (Path(jupyter_server.__file__).parent / "static" / "logo" / "logo.png").read_bytes()

    async with http.get(f"{base}/static/ipython/logo/logo.png") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        assert await resp.read() == on_disk

    async with http.head(f"{base}/static/ipython/logo/logo.png") as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(on_disk)
        assert await resp.read() == b""


# HTTP against an aiohttp upstream


async def test_headers_hop_by_hop_forwarded_and_host(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy(
        {
            "prefix": "/",
            "upstream": upstream,
            "request_headers": {"set": {"X-Route": "main"}, "remove": ["X-Drop-Me"]},
        },
        {"prefix": "/rewritten/", "upstream": f"{upstream}/echo/", "preserve_host": False},
    )
    sent = {
        "Connection": "keep-alive, X-Client-Hop",
        "X-Client-Hop": "must not pass",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic secret",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Drop-Me": "1",
        "Cookie": "session=abc; other=def",
        "Authorization": "token xyz",
        "Origin": "http://example.test",
    }
    url = URL(f"{base}/echo/path?q=a%20b&x=%2F", encoded=True)  # as sent, not normalized
    async with http.get(url, headers=sent) as resp:
        assert resp.status == 200
        report = await resp.json()
        client_headers = resp.headers
    got = {k.lower(): v for k, v in report["headers"]}
    proxy_host = base.removeprefix("http://")

    assert report["path_qs"] == "/echo/path?q=a%20b&x=%2F"
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization", "x-drop-me"):
        assert name not in got, name
    assert got["host"] == proxy_host
    assert got["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == proxy_host
    assert got["x-route"] == "main"
    assert got["cookie"] == "session=abc; other=def"
    assert got["authorization"] == "token xyz"
    assert got["origin"] == "http://example.test"
    assert "x-upstream-hop" not in client_headers
    assert "Keep-Alive" not in client_headers
    assert client_headers["X-Upstream-Kept"] == "kept"

    async with http.get(f"{base}/rewritten/x") as resp:
        report = await resp.json()
    got = {k.lower(): v for k, v in report["headers"]}
    assert report["path_qs"] == "/echo/x"
    assert got["host"] == upstream.removeprefix("http://")
    assert got["x-forwarded-host"] == proxy_host


async def test_no_request_headers_are_invented(
    echo_upstream: tuple[str, web.Application], start_proxy: StartProxy
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy({"prefix": "/", "upstream": upstream})
    host_port = base.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*host_port.split(":"))
    body = b'{"a": 1}'
    writer.write(
        f"POST /echo HTTP/1.1\r\nHost: {host_port}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    report = json.loads(payload)
    names = sorted(name.lower() for name, _ in report["headers"])
    assert names == [
        "content-length",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ]
    assert report["body_len"] == len(body)


async def test_status_cookies_and_redirects_pass_unchanged(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy({"prefix": "/", "upstream": upstream})

    async with http.get(f"{base}/cookies") as resp:
        assert resp.status == 201
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]

    async with http.get(f"{base}/redirect", allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/elsewhere"

    async with http.get(f"{base}/teapot") as resp:
        assert resp.status == 418
        assert await resp.text() == "short and stout"

    async with http.head(f"{base}/echo") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_upstream_cut_mid_body_cuts_the_client(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy({"prefix": "/", "upstream": upstream})
    async with http.get(f"{base}/truncated") as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_request_body_framing_is_kept(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy({"prefix": "/", "upstream": upstream})
    payload = os.urandom(3 * MiB + 17)

    async with http.post(f"{base}/echo", data=payload) as resp:
        report = await resp.json()
    got = {k.lower(): v for k, v in report["headers"]}
    assert got["content-length"] == str(len(payload))
    assert "transfer-encoding" not in got
    assert report["body_sha256"] == hashlib.sha256(payload).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), MiB):
            yield payload[start : start + MiB]

    async with http.put(f"{base}/echo", data=chunks()) as resp:
        report = await resp.json()
    got = {k.lower(): v for k, v in report["headers"]}
    assert got["transfer-encoding"] == "chunked"
    assert "content-length" not in got
    assert report["method"] == "PUT"
    assert report["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_upstream_down_gives_502_json_or_error_page(
    start_proxy: StartProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    page = tmp_path / "502.html"
    page.write_text("<h1>The notebook server is having a rest</h1>")
    dead = f"http://127.0.0.1:{free_port()}"
    base = await start_proxy(
        {"prefix": "/plain/", "upstream": dead},
        {"prefix": "/pretty/", "upstream": dead, "error_pages": {502: str(page)}},
    )

    async with http.get(f"{base}/plain/api/status") as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["status"] == 502
        assert body["route"] == "/plain/"

    async with http.post(f"{base}/pretty/api/kernels", data=b"{}") as resp:
        assert resp.status == 502
        assert resp.headers["Content-Type"].startswith("text/html")
        assert await resp.text() == page.read_text()

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect(f"{base}/plain/ws"):
            pass
    assert refused.value.status == 502


async def test_slow_upstream_gives_504(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy(
        {"prefix": "/", "upstream": upstream, "timeouts": {"connect": 2, "response": 0.3}}
    )
    async with http.get(f"{base}/slow") as resp:
        assert resp.status == 504
        assert (await resp.json())["status"] == 504


# Large bodies through a proxy subprocess, watching its memory


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.fixture
async def bulk_upstream() -> AsyncIterator[str]:
    """An upstream that streams generated bytes out and hashes what it is sent."""

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    app = web.Application()
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    runner, url = await serve(app)
    yield url
    await runner.cleanup()


async def test_large_bodies_stream_without_buffering(
    bulk_upstream: str, http: aiohttp.ClientSession
) -> None:
    proxy = await asyncio.to_thread(start_proxy_process, proxy_config(bulk_upstream))
    try:
        assert proxy.proc is not None
        pid = proxy.proc.pid
        async with http.get(f"{proxy.url}/download?bytes=1000") as resp:  # warm up
            assert len(await resp.read()) == 1000
        baseline = peak_rss_bytes(pid)

        size = 300 * MiB
        block = bytes(range(256)) * 256
        received = 0
        async with http.get(f"{proxy.url}/download?bytes={size}") as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(256 * 1024):
                offset = received % len(block)
                expected = (block * (len(chunk) // len(block) + 2))[offset : offset + len(chunk)]
                assert chunk == expected
                received += len(chunk)
        assert received == size

        sent_digest = hashlib.sha256()

        async def upload_body() -> AsyncIterator[bytes]:
            piece = os.urandom(MiB)
            for _ in range(size // MiB):
                sent_digest.update(piece)
                yield piece

        async with http.post(f"{proxy.url}/upload", data=upload_body()) as resp:
            report = await resp.json()
        assert report == {"bytes": size, "sha256": sent_digest.hexdigest()}

        growth = peak_rss_bytes(pid) - baseline
        assert growth < 64 * MiB, f"proxy peak RSS grew {growth // MiB} MiB for {size // MiB} MiB"
    finally:
        await asyncio.to_thread(proxy.stop)


# WebSockets


async def new_kernel(http: aiohttp.ClientSession, base: str, token: str) -> str:
    async with http.post(
        f"{base}/api/kernels", headers={"Authorization": f"token {token}"}, json={}
    ) as resp:
        assert resp.status == 201
        return (await resp.json())["id"]


async def delete_kernel(http: aiohttp.ClientSession, base: str, token: str, kernel: str) -> None:
    async with http.delete(
        f"{base}/api/kernels/{kernel}", headers={"Authorization": f"token {token}"}
    ) as resp:
        assert resp.status == 204


def execute_request(session_id: str, code: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "session": session_id,
            "username": "test",
            "version": "5.3",
            "date": "2024-01-01T00:00:00.000000Z",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False},
        "channel": "shell",
    }


async def run_code(
    ws: aiohttp.ClientWebSocketResponse, session_id: str, code: str, *, v1: bool
) -> tuple[dict[str, Any], str]:
    """Execute code over a /channels socket; return the execute_reply and the stdout text."""
    request = execute_request(session_id, code)
    if v1:
        pack = lambda part: json.dumps(part).encode()  # noqa: E731
        await ws.send_bytes(serialize_msg_to_ws_v1(request, "shell", pack))
    else:
        await ws.send_str(json.dumps(request))
    stdout: list[str] = []
    reply = None
    idle = False
    for _ in range(10_000):
        msg = await ws.receive(timeout=60)
        if v1:
            assert msg.type is WSMsgType.BINARY, msg
            channel, parts = deserialize_msg_from_ws_v1(msg.data)
            header, parent, _meta, content = (json.loads(p) for p in parts[:4])
        else:
            assert msg.type is WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            channel, header, parent, content = (
                data["channel"],
                data["header"],
                data["parent_header"],
                data["content"],
            )
        if parent.get("msg_id") != request["header"]["msg_id"]:
            continue
        if channel == "shell" and header["msg_type"] == "execute_reply":
            reply = content
        elif header["msg_type"] == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif header["msg_type"] == "status" and content["execution_state"] == "idle":
            idle = True
        if reply is not None and idle:
            return reply, "".join(stdout)
    raise AssertionError("no execute_reply and idle status")


@pytest.mark.parametrize("offer", [(), (V1_PROTOCOL,)], ids=["json", "v1-subprotocol"])
async def test_kernel_channels_through_proxy(
    jupyter: JupyterServer,
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
    offer: tuple[str, ...],
) -> None:
    base = await start_proxy({"prefix": "/", "upstream": jupyter.url})
    kernel = await new_kernel(http, base, jupyter.token)
    session_id = uuid.uuid4().hex
    url = f"{base}/api/kernels/{kernel}/channels?session_id={session_id}&token={jupyter.token}"
    try:
        async with http.ws_connect(url, protocols=offer, max_msg_size=0) as ws:
            assert ws.protocol == (offer[0] if offer else None)
            reply, out = await run_code(ws, session_id, "print(6 * 7)", v1=bool(offer))
            assert reply["status"] == "ok"
            assert out == "42\n"

            # Larger than aiohttp's 4 MiB default on both hops.
            reply, out = await run_code(
                ws, session_id, "print('x' * 5_000_000, end='')", v1=bool(offer)
            )
            assert reply["status"] == "ok"
            assert out == "x" * 5_000_000
    finally:
        await delete_kernel(http, base, jupyter.token, kernel)


async def test_unknown_subprotocol_is_not_chosen(
    jupyter: JupyterServer, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    base = await start_proxy({"prefix": "/", "upstream": jupyter.url})
    kernel = await new_kernel(http, base, jupyter.token)
    session_id = uuid.uuid4().hex
    url = f"{base}/api/kernels/{kernel}/channels?session_id={session_id}&token={jupyter.token}"
    try:
        async with http.ws_connect(url, protocols=("made.up.protocol",)) as ws:
            assert ws.protocol is None
            _, out = await run_code(ws, session_id, "print('plain')", v1=False)
            assert out == "plain\n"
    finally:
        await delete_kernel(http, base, jupyter.token, kernel)


async def test_websocket_refusal_keeps_status(
    jupyter: JupyterServer, start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    base = await start_proxy({"prefix": "/", "upstream": jupyter.url})
    kernel = await new_kernel(http, base, jupyter.token)
    try:
        url = f"{base}/api/kernels/{kernel}/channels?session_id=s&token=wrong"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with http.ws_connect(url):
                pass
        assert refused.value.status == 403

        url = f"{base}/api/kernels/{uuid.uuid4()}/channels?session_id=s&token={jupyter.token}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
            async with http.ws_connect(url):
                pass
        assert missing.value.status == 404
    finally:
        await delete_kernel(http, base, jupyter.token, kernel)


async def test_websocket_frames_and_close_codes_both_ways(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, app = echo_upstream
    base = await start_proxy(
        {"prefix": "/", "upstream": upstream}, limits={"max_message_bytes": 16 * MiB}
    )
    big = os.urandom(5 * MiB)

    async with http.ws_connect(f"{base}/ws", max_msg_size=0) as ws:
        await ws.send_str("héllo ☃")
        assert (await ws.receive(timeout=30)).data == "héllo ☃"
        await ws.send_bytes(big)
        echoed = await ws.receive(timeout=30)
        assert echoed.type is WSMsgType.BINARY
        assert echoed.data == big
        await ws.ping(b"still there?")  # answered by the proxy; the relay stays up
        await ws.send_str("after ping")
        assert (await ws.receive(timeout=30)).data == "after ping"

        # Upstream closes: its code and reason reach the client.
        await ws.send_str("close 4002 upstream says bye")
        closing = await ws.receive(timeout=30)
        assert closing.type is WSMsgType.CLOSE
        assert closing.data == 4002
        assert closing.extra == "upstream says bye"

    # Client closes: its code and reason reach the upstream.
    async with http.ws_connect(f"{base}/ws") as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=30)).data == "ping"
        await ws.close(code=4001, message=b"client says bye")
        assert ws.close_code == 1000  # the upstream's answer (aiohttp answers with 1000)
    await wait_for_closes(app, 2)
    assert app[LAST_CLOSE][1] == (4001, "client says bye")


async def test_websocket_message_over_limit_closes_with_1009(
    echo_upstream: tuple[str, web.Application],
    start_proxy: StartProxy,
    http: aiohttp.ClientSession,
) -> None:
    upstream, _ = echo_upstream
    base = await start_proxy({"prefix": "/", "upstream": upstream, "max_message_bytes": MiB})
    async with http.ws_connect(f"{base}/ws") as ws:
        await ws.send_bytes(b"x" * (2 * MiB))
        msg = await ws.receive(timeout=30)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1009


async def test_shutdown_closes_relays_upstream_first(
    echo_upstream: tuple[str, web.Application], http: aiohttp.ClientSession
) -> None:
    upstream, upstream_app = echo_upstream
    app = proxy_app({"routes": [{"prefix": "/", "upstream": upstream}]})
    runner, base = await serve(app)
    try:
        async with http.ws_connect(f"{base}/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=30)).data == "hello"
            shutdown = asyncio.create_task(app[PASSTHROUGH].shutdown())
            msg = await ws.receive(timeout=30)
            assert msg.type is WSMsgType.CLOSE
            assert msg.data == 1012
            await shutdown
        await wait_for_closes(upstream_app, 1)
        assert upstream_app[LAST_CLOSE] == [(1001, "proxy shutting down")]
    finally:
        await runner.cleanup()


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS upstream on loopback with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await openssl.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}", cert
    await runner.cleanup()


async def test_https_upstream_tls_settings(
    tls_upstream: tuple[str, Path], start_proxy: StartProxy, http: aiohttp.ClientSession
) -> None:
    upstream, cert = tls_upstream
    base = await start_proxy(
        {"prefix": "/trusted/", "upstream": upstream, "tls": {"ca_bundle": str(cert)}},
        {"prefix": "/unverified/", "upstream": upstream, "tls": {"verify": False}},
        {"prefix": "/strict/", "upstream": upstream},
        {"prefix": "/missing/", "upstream": upstream, "tls": {"ca_bundle": "/nonexistent.pem"}},
    )
    for prefix, status in (
        ("trusted", 418),
        ("unverified", 418),
        ("strict", 502),
        ("missing", 502),
    ):
        async with http.get(f"{base}/{prefix}/teapot") as resp:
            assert resp.status == status, prefix
    async with http.ws_connect(f"{base}/trusted/ws") as ws:
        await ws.send_str("over tls")
        assert (await ws.receive(timeout=30)).data == "over tls"
