"""Hypothesis against one running proxy: random handshakes and frames on the legacy endpoints,
random and truncated frames from a fake upstream. Only the offending session may close."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.stub_upstream import V1_SUBPROTOCOL, KernelSession, parse_inbound
from tests.reliability.figures import report_figure
from tests.reliability.rawws import OP_TEXT, RawWebSocket, encode_frame
from tests.support.legacy_client import CHANNELS, LegacyKernelClient, kernel_js_session_id
from tests.support.servers import JupyterServer, ProxyProcess, proxy_config, start_proxy

MiB = 1024 * 1024
FUZZ_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
tried = {"legacy_examples": 0, "legacy_frames": 0, "upstream_examples": 0, "upstream_frames": 0}


@pytest.fixture(scope="module", autouse=True)
def report_tried() -> Iterator[None]:
    yield
    report_figure("fuzz_inputs", **tried)


# -- legacy side ---------------------------------------------------------------------------


@dataclass
class LegacyFuzzTarget:
    proxy: ProxyProcess
    jupyter: JupyterServer
    victim_kernel: str
    healthy_kernel: str


@pytest.fixture(scope="module")
def legacy_target(jupyter: JupyterServer) -> Iterator[LegacyFuzzTarget]:
    proxy = start_proxy(
        proxy_config(
            jupyter.url,
            admin={"enabled": False},
            limits={"max_message_bytes": MiB, "handshake_timeout": 1.0},
            sessions={"grace_period": 0.2},
        )
    )
    victim, healthy = asyncio.run(_two_kernels(jupyter))
    yield LegacyFuzzTarget(proxy, jupyter, victim, healthy)
    proxy.stop()
    for kernel in (victim, healthy):
        asyncio.run(jupyter.delete_kernel(kernel))


async def _two_kernels(jupyter: JupyterServer) -> tuple[str, str]:
    return await jupyter.create_kernel(), await jupyter.create_kernel()


SAFE_MSG_TYPES = ["execute_request", "kernel_info_request", "comm_msg", "object_info_request",
                  "complete_request", "input_reply", "no_such_type", ""]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def v4_messages(draw: st.DrawFn) -> bytes:
    header = {
        "msg_id": draw(st.text(max_size=12) | st.integers()),
        "msg_type": draw(st.sampled_from(SAFE_MSG_TYPES)),
        "session": draw(st.text(max_size=8)),
        "username": "u",
    }
    msg = {
        "header": draw(st.just(header) | json_values),
        "parent_header": draw(json_values),
        "metadata": draw(json_values),
        "content": draw(st.dictionaries(st.sampled_from(["code", "silent", "x"]), json_values)),
    }
    if header["msg_type"] == "execute_request" and isinstance(msg["content"].get("code"), str):
        msg["content"]["code"] = "#" + msg["content"]["code"]  # never run fuzz as code
    return json.dumps(msg).encode()


# (opcode, payload): what one legacy client frame looks like on the wire
client_frames = st.one_of(
    st.tuples(st.just(WSMsgType.TEXT), v4_messages()),
    st.tuples(st.just(WSMsgType.TEXT), v4_messages().map(lambda b: b[: len(b) // 2])),
    st.tuples(st.just(WSMsgType.TEXT), st.text(max_size=200).map(str.encode)),
    st.tuples(st.just(WSMsgType.TEXT), st.sampled_from([b"\xff\xfe", b'{"a": "\xc3\x28"}'])),
    st.tuples(st.just(WSMsgType.BINARY), st.binary(max_size=200)),
    st.tuples(st.just(WSMsgType.TEXT), st.just(b"[" * 10 + b"x" * (MiB + 10))),
)
handshakes = st.one_of(
    st.builds(lambda c: f"{kernel_js_session_id()}:{c}".encode(), st.text(max_size=50)),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=60),
)


@FUZZ_SETTINGS
@given(
    channel=st.sampled_from(CHANNELS),
    handshake=handshakes,
    handshake_binary=st.booleans(),
    frames=st.lists(client_frames, max_size=4),
    raw_tail=st.none() | st.binary(min_size=1, max_size=64),
)
def test_fuzzed_legacy_client_never_hurts_other_sessions(
    legacy_target, channel, handshake, handshake_binary, frames, raw_tail
):
    asyncio.run(
        _legacy_example(legacy_target, channel, handshake, handshake_binary, frames, raw_tail)
    )


async def _legacy_example(
    target: LegacyFuzzTarget,
    channel: str,
    handshake: bytes,
    handshake_binary: bool,
    frames: list[tuple[WSMsgType, bytes]],
    raw_tail: bytes | None,
) -> None:
    tried["legacy_examples"] += 1
    tried["legacy_frames"] += 1 + len(frames) + (raw_tail is not None)
    path = f"/api/kernels/{target.victim_kernel}/{channel}?token={target.jupyter.token}"
    if raw_tail is not None:  # garbage or a truncated frame straight on the TCP stream
        raw = await RawWebSocket.connect(target.proxy.port, path)
        await raw.send(encode_frame(OP_TEXT, handshake) + raw_tail)
        raw.close()
    else:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(target.proxy.ws_url + path, max_msg_size=0) as ws:
                opcode = WSMsgType.BINARY if handshake_binary else WSMsgType.TEXT
                try:
                    await ws.send_frame(handshake, opcode)
                    for opcode, payload in frames:
                        await ws.send_frame(payload, opcode)
                except ConnectionError:
                    pass  # the proxy closed us mid-way: that is its answer
                try:
                    msg = await ws.receive(timeout=0.3)
                    while msg.type not in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                        msg = await ws.receive(timeout=0.3)
                except TimeoutError:
                    pass  # still open: the frames were acceptable
    await assert_healthy(target.proxy, target.healthy_kernel, target.jupyter.token)


async def assert_healthy(proxy: ProxyProcess, kernel_id: str, token: str | None) -> None:
    assert proxy.proc is not None and proxy.proc.poll() is None, "proxy died"
    async with LegacyKernelClient(proxy.ws_url, kernel_id, token=token) as client:
        reply = await client.request("execute_request", {"code": "1", "silent": True}, timeout=30)
        assert reply["content"]["status"] == "ok"


# -- upstream side -------------------------------------------------------------------------


@dataclass
class FakeUpstream:
    """A loopback server posing as jupyter_server: scripted frames for some session ids."""

    scripts: dict[str, list[tuple[WSMsgType, bytes]]] = field(default_factory=dict)
    port: int = 0
    loop: asyncio.AbstractEventLoop | None = None

    async def channels(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(V1_SUBPROTOCOL,), max_msg_size=0)
        await ws.prepare(request)
        v1 = ws.ws_protocol == V1_SUBPROTOCOL
        script = self.scripts.get(request.query.get("session_id", ""))
        kernel = KernelSession()
        for opcode, payload in script or []:
            if ws.closed:
                break
            await ws.send_frame(payload, opcode)
        async for msg in ws:
            if script is not None or msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            inbound = parse_inbound(msg.data, v1, msg.type is WSMsgType.BINARY)
            if inbound is not None and inbound.header.get("msg_type") == "execute_request":
                reply = kernel.execute_reply(v1, inbound.header)
                await ws.send_frame(reply, WSMsgType.BINARY if v1 else WSMsgType.TEXT)
        return ws


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/api/kernels/{kernel_id}/channels", fake.channels)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        await runner.cleanup()

    def run() -> None:
        fake.loop = asyncio.new_event_loop()
        fake.loop.run_until_complete(serve())
        fake.loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield fake
    assert fake.loop is not None
    fake.loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)


@pytest.fixture(scope="module")
def upstream_target(fake_upstream: FakeUpstream) -> Iterator[ProxyProcess]:
    proxy = start_proxy(
        proxy_config(
            f"http://127.0.0.1:{fake_upstream.port}",
            admin={"enabled": False},
            sessions={"grace_period": 0.2},
        )
    )
    yield proxy
    proxy.stop()


def v1_frame(channel: bytes, parts: list[bytes]) -> bytes:
    """A v1.kernel.websocket.jupyter.org frame (count, offsets, channel, parts), built by hand."""
    all_parts = [channel, *parts]
    count = len(all_parts) + 1
    offsets = [8 * (count + 1)]
    for part in all_parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{count + 1}Q", count, *offsets) + b"".join(all_parts)


@st.composite
def valid_v1_frames(draw: st.DrawFn) -> bytes:
    channel = draw(st.sampled_from([b"iopub", b"shell", b"stdin", b"control", b"nope"]))
    header = {"msg_id": str(uuid.uuid4()), "msg_type": draw(st.sampled_from(["stream", "status",
              "execute_reply", "display_data", "weird"])), "session": "k", "username": "k",
              "version": "5.3", "date": "2024-01-01T00:00:00Z"}  # fmt: skip
    content = draw(
        st.dictionaries(st.sampled_from(["name", "text", "data", "status"]), json_values)
    )
    parts = [json.dumps(header).encode(), b"{}", b"{}", json.dumps(content).encode()]
    return v1_frame(channel, parts)


upstream_frames = st.one_of(
    st.tuples(st.just("valid"), valid_v1_frames()),
    st.tuples(
        st.just("truncated"),
        valid_v1_frames().flatmap(lambda f: st.integers(0, len(f) - 1).map(lambda n: f[:n])),
    ),
    st.tuples(st.just("random"), st.binary(max_size=120)),
    st.tuples(st.just("text"), st.text(max_size=120).map(str.encode)),
)


@FUZZ_SETTINGS
@given(frames=st.lists(upstream_frames, min_size=1, max_size=5))
def test_fuzzed_upstream_closes_only_its_session(upstream_target, fake_upstream, frames):
    asyncio.run(_upstream_example(upstream_target, fake_upstream, frames))


async def _upstream_example(
    proxy: ProxyProcess, fake: FakeUpstream, frames: list[tuple[str, bytes]]
) -> None:
    tried["upstream_examples"] += 1
    tried["upstream_frames"] += len(frames)
    victim_session = kernel_js_session_id()
    fake.scripts[victim_session] = [
        (WSMsgType.TEXT if kind == "text" else WSMsgType.BINARY, data) for kind, data in frames
    ]
    kernel = str(uuid.uuid4())
    async with LegacyKernelClient(proxy.ws_url, str(uuid.uuid4())) as bystander:
        victim = LegacyKernelClient(proxy.ws_url, kernel, session_id=victim_session)
        try:
            await victim.connect()
            malformed = any(kind == "truncated" for kind, _ in frames)
            try:
                closed = await victim.wait_closed("iopub", timeout=5 if malformed else 0.5)
            except TimeoutError:
                closed = None
            if malformed:
                assert closed is not None, "a truncated upstream frame did not close the session"
            if closed is not None:
                assert closed.code in (1002, 1007, 1011), closed
                assert closed.reason, closed
        finally:
            await victim.close()
            del fake.scripts[victim_session]
        reply = await bystander.request("execute_request", {"code": "1", "silent": True})
        assert reply["content"]["status"] == "ok"
    await assert_healthy(proxy, str(uuid.uuid4()), None)
