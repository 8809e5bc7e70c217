"""Kernel websocket clients and the workloads the benchmarks time.

Clients:
- `LegacyClient`: IPython 1.x/2.x style, three sockets `<base>api/kernels/<id>/shell|iopub|stdin`,
  each opened with the `"<session_id>:<cookies>"` frame, then JSON messages (spec v4 or v5)
  without a channel key.
- `ChannelsClient`: one `<base>api/kernels/<id>/channels?session_id=...` socket, with the default
  JSON framing or the `v1.kernel.websocket.jupyter.org` binary framing.

Clients hand every frame to `on_frame(channel, data)` as bytes and never decode what a
workload does not need, so the load generator stays cheap next to the hop it measures.

CLI (one measurement, JSON result on stdout)::

    python -m bench.loadgen --url http://127.0.0.1:8890 --client legacy-v4 --workload flood
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import WSMsgType

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CLIENT_KINDS = ("legacy-v4", "legacy-v5", "channels-json", "channels-v1")
LEGACY_CHANNELS = ("shell", "iopub", "stdin")
_CHANNEL_KEY = b'"channel": "'
_V1_SHELL = b"shell"

FrameSink = Callable[[str, bytes], None]


class BenchError(Exception):
    """A benchmark could not run as asked: the message says which hop and why."""


def _ignore(channel: str, data: bytes) -> None:
    return None


def new_session_id() -> str:
    """A session id shaped like kernel.js 2.x makes them (32 uppercase hex)."""
    return uuid.uuid4().hex.upper()


def execute_request(session_id: str, code: str, spec: str = "v5") -> dict[str, Any]:
    """An execute_request as an IPython 2.x frontend (v4) or a modern one (v5) sends it."""
    header: dict[str, Any] = {
        "msg_id": uuid.uuid4().hex.upper(),
        "username": "username",
        "session": session_id,
        "msg_type": "execute_request",
    }
    content: dict[str, Any] = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
    }
    if spec == "v4":
        content["user_variables"] = []
    else:
        header["date"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        header["version"] = "5.3"
        content["stop_on_error"] = True
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content}


def channel_of(data: bytes, binary: bool, v1: bool) -> str:
    """The channel a `/channels` frame belongs to, reading as little of it as possible."""
    if v1:
        start = int.from_bytes(data[8:16], "little")
        end = int.from_bytes(data[16:24], "little")
        return data[start:end].decode()
    if not binary:
        # jupyter_server adds "channel" last, so it sits in the frame's tail.
        at = data.rfind(_CHANNEL_KEY, max(0, len(data) - 48))
        if at >= 0:
            begin = at + len(_CHANNEL_KEY)
            return data[begin : data.index(b'"', begin)].decode()
    msg = decode_frame(data, binary, v1=False)
    return str(msg.get("channel") or "")


def decode_frame(data: bytes, binary: bool, v1: bool) -> dict[str, Any]:
    """A whole message from any framing (channel key included for `/channels` framings)."""
    if v1:
        count = int.from_bytes(data[:8], "little")
        offsets = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
        offsets.append(len(data))
        parts = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
        return {
            "channel": parts[0].decode(),
            "header": json.loads(parts[1]),
            "parent_header": json.loads(parts[2]),
            "metadata": json.loads(parts[3]),
            "content": json.loads(parts[4]),
        }
    if binary:
        count = struct.unpack_from("!I", data)[0]
        offsets = struct.unpack_from(f"!{count}I", data, 4)
        data = data[offsets[0] : offsets[1] if count > 1 else len(data)]
    return json.loads(data)


def encode_v1(channel: str, msg: dict[str, Any]) -> bytes:
    """A client message in the v1 binary framing."""
    parts = [channel.encode()] + [
        json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")
    ]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets)
    return head + b"".join(parts)


def _ws_url(base: str, path: str) -> str:
    base = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return base.rstrip("/") + "/" + path.lstrip("/")


class KernelClient:
    """What every client offers a workload: send on shell, frames to `on_frame`, close."""

    kind: str
    spec: str  # message spec of what this client sends ("v4" or "v5")
    session_id: str

    def __init__(self) -> None:
        self.on_frame: FrameSink = _ignore
        self._pumps: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()

    async def send_shell(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def decode(self, channel: str, data: bytes) -> dict[str, Any]:
        raise NotImplementedError

    async def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        if self._pumps:
            # asyncio.wait, unlike awaiting each task, lets our own cancellation through.
            await asyncio.wait(self._pumps)


class ChannelsClient(KernelClient):
    """One `/channels` websocket, JSON framing or v1 framing."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        kernel_id: str,
        framing: str = "json",
        session_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.kind = f"channels-{framing}"
        self.spec = "v5"
        self.v1 = framing == "v1"
        self.session_id = session_id or new_session_id()
        self._url = _ws_url(base_url, f"api/kernels/{kernel_id}/channels")
        self._http = http
        self._headers = headers or {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> ChannelsClient:
        self._ws = await self._http.ws_connect(
            self._url,
            params={"session_id": self.session_id},
            protocols=(V1_SUBPROTOCOL,) if self.v1 else (),
            headers=self._headers,
            compress=0,
            autoping=True,
            max_msg_size=MAX_MESSAGE_BYTES,
            decode_text=False,
        )
        if self.v1 and self._ws.protocol != V1_SUBPROTOCOL:
            await self._ws.close()
            raise BenchError(f"{self._url}: the v1 subprotocol was not accepted on the way")
        self._pumps.append(asyncio.ensure_future(self._pump(self._ws)))
        return self

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        v1 = self.v1
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    binary = kind is WSMsgType.BINARY
                    self.on_frame(channel_of(msg.data, binary, v1), msg.data)
                elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
        finally:
            self.closed.set()

    async def send_shell(self, msg: dict[str, Any]) -> None:
        assert self._ws is not None
        if self.v1:
            await self._ws.send_bytes(encode_v1("shell", msg))
        else:
            await self._ws.send_str(json.dumps({**msg, "channel": "shell"}))

    def decode(self, channel: str, data: bytes) -> dict[str, Any]:
        binary = self.v1 or data[:1] != b"{"
        return decode_frame(data, binary, self.v1)

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
        await super().close()


class LegacyClient(KernelClient):
    """Three legacy sockets with the session handshake, as IPython 2.x's kernel.js opens them."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        kernel_id: str,
        spec: str = "v4",
        session_id: str | None = None,
        headers: dict[str, str] | None = None,
        cookies: str = "",
    ) -> None:
        super().__init__()
        self.kind = f"legacy-{spec}"
        self.spec = spec
        self.session_id = session_id or new_session_id()
        self._base = _ws_url(base_url, f"api/kernels/{kernel_id}/")
        self._http = http
        self._headers = headers or {}
        self._cookies = cookies
        self._sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    async def connect(self) -> LegacyClient:
        async def open_one(channel: str) -> None:
            ws = await self._http.ws_connect(
                self._base + channel,
                headers=self._headers,
                compress=0,
                max_msg_size=MAX_MESSAGE_BYTES,
                decode_text=False,
            )
            self._sockets[channel] = ws
            await ws.send_str(f"{self.session_id}:{self._cookies}")

        try:
            await asyncio.gather(*(open_one(c) for c in LEGACY_CHANNELS))
        except BaseException:
            await self.close()
            raise
        for channel, ws in self._sockets.items():
            self._pumps.append(asyncio.ensure_future(self._pump(channel, ws)))
        return self

    async def _pump(self, channel: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    self.on_frame(channel, msg.data)
                elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
        finally:
            self.closed.set()

    async def send_shell(self, msg: dict[str, Any]) -> None:
        await self._sockets["shell"].send_str(json.dumps(msg))

    def decode(self, channel: str, data: bytes) -> dict[str, Any]:
        msg = json.loads(data)
        msg.setdefault("channel", channel)
        return msg

    async def close(self) -> None:
        for ws in self._sockets.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        await super().close()


async def connect_client(
    http: aiohttp.ClientSession,
    kind: str,
    base_url: str,
    kernel_id: str,
    headers: dict[str, str] | None = None,
) -> KernelClient:
    """Open a client of `kind` (one of CLIENT_KINDS)."""
    if kind.startswith("legacy-"):
        return await LegacyClient(http, base_url, kernel_id, kind[7:], headers=headers).connect()
    if kind.startswith("channels-"):
        framing = kind[9:]
        return await ChannelsClient(http, base_url, kernel_id, framing, headers=headers).connect()
    raise BenchError(f"unknown client kind {kind!r}; expected one of {CLIENT_KINDS}")


def http_session(limit: int = 0) -> aiohttp.ClientSession:
    """A client session fit for thousands of sockets on loopback."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=30),
    )


@dataclass
class Throughput:
    """Frames received on iopub during one stream workload."""

    messages: int
    bytes: int
    seconds: float
    complete: bool

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class _Reply:
    """Waits for the shell frame that answers one request (matched on its msg_id)."""

    __slots__ = ("future", "msg_id")

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id.encode()
        self.future: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def offer(self, data: bytes) -> None:
        if not self.future.done() and self.msg_id in data:
            self.future.set_result(time.perf_counter())


async def stream_workload(
    client: KernelClient,
    workload: str,
    count: int,
    size: int,
    rate: float = 0.0,
    time_limit: float = 60.0,
) -> Throughput:
    """Ask the stub for `count` iopub stream messages of `size` content bytes and time them."""
    done = asyncio.get_running_loop().create_future()
    received = 0
    nbytes = 0
    last = 0.0
    msg = execute_request(
        client.session_id,
        f"%bench {workload} count={count} size={size} rate={rate} seconds={time_limit}",
        client.spec,
    )
    reply = _Reply(msg["header"]["msg_id"])

    def sink(channel: str, data: bytes) -> None:
        nonlocal received, nbytes, last
        if channel == "iopub":
            received += 1
            nbytes += len(data)
            if received == count:
                last = time.perf_counter()
                done.set_result(None)
        elif channel == "shell":
            reply.offer(data)

    client.on_frame = sink
    started = time.perf_counter()
    try:
        await client.send_shell(msg)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), time_limit)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply.future, 10.0)
    finally:
        client.on_frame = _ignore
    complete = received >= count
    end = last if complete else time.perf_counter()
    return Throughput(received, nbytes, end - started, complete)


async def echo_round_trips(
    client: KernelClient, rounds: int, code: str = "pass", time_limit: float = 60.0
) -> list[float]:
    """Sequential execute_request -> execute_reply round trips, in seconds each."""
    samples: list[float] = []
    deadline = time.monotonic() + time_limit
    reply: _Reply | None = None

    def sink(channel: str, data: bytes) -> None:
        if channel == "shell" and reply is not None:
            reply.offer(data)

    client.on_frame = sink
    try:
        for _ in range(rounds):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = execute_request(client.session_id, code, client.spec)
            reply = _Reply(msg["header"]["msg_id"])
            started = time.perf_counter()
            await client.send_shell(msg)
            try:
                answered = await asyncio.wait_for(reply.future, min(left, 30.0))
            except TimeoutError as exc:
                raise BenchError(f"{client.kind}: no execute_reply within {left:.0f} s") from exc
            samples.append(answered - started)
    finally:
        client.on_frame = _ignore
    return samples


@dataclass
class Execution:
    """One execution on a real kernel: when the reply and the final idle came, what it printed."""

    reply_seconds: float = 0.0
    idle_seconds: float = 0.0
    stream_lines: int = 0
    output_bytes: int = 0
    largest_output: int = 0
    complete: bool = False
    types: dict[str, int] = field(default_factory=dict)


async def execute_and_collect(
    client: KernelClient, code: str, time_limit: float = 120.0
) -> Execution:
    """Run code on a real kernel; time the reply and the idle status, count its output."""
    result = Execution()
    msg = execute_request(client.session_id, code, client.spec)
    msg_id = msg["header"]["msg_id"]
    loop = asyncio.get_running_loop()
    idle = loop.create_future()
    replied = loop.create_future()
    started = time.perf_counter()

    def sink(channel: str, data: bytes) -> None:
        if msg_id.encode() not in data:
            return
        now = time.perf_counter()
        decoded = client.decode(channel, data)
        if decoded.get("parent_header", {}).get("msg_id") != msg_id:
            return
        msg_type = decoded["header"]["msg_type"]
        content = decoded.get("content", {})
        result.types[msg_type] = result.types.get(msg_type, 0) + 1
        if msg_type == "execute_reply":
            result.reply_seconds = now - started
            if not replied.done():
                replied.set_result(None)
        elif msg_type == "stream":
            text = content.get("text", content.get("data", ""))
            result.stream_lines += text.count("\n")
            result.output_bytes += len(text)
            result.largest_output = max(result.largest_output, len(text))
        elif msg_type in ("display_data", "execute_result", "pyout"):
            text = content.get("data", {}).get("text/plain", "")
            result.output_bytes += len(text)
            result.largest_output = max(result.largest_output, len(text))
        elif msg_type == "status" and content.get("execution_state") == "idle":
            result.idle_seconds = now - started
            if not idle.done():
                idle.set_result(None)

    client.on_frame = sink
    try:
        await client.send_shell(msg)
        # The reply (shell) and the final idle (iopub) come from different kernel sockets, in
        # either order: wait for both.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(idle, replied), time_limit)
    finally:
        client.on_frame = _ignore
    result.complete = result.idle_seconds > 0 and result.reply_seconds > 0
    return result


async def open_many(
    http: aiohttp.ClientSession,
    kind: str,
    base_url: str,
    kernel_id: str,
    count: int,
    concurrency: int = 64,
    time_limit: float = 300.0,
) -> list[KernelClient]:
    """Open `count` idle clients (a few at a time); close them all if any fails."""
    clients: list[KernelClient] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            clients.append(await connect_client(http, kind, base_url, kernel_id))

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), time_limit)
    except BaseException:
        await close_all(clients)
        raise
    return clients


async def close_all(clients: list[KernelClient], concurrency: int = 256) -> None:
    """Close clients a batch at a time."""
    for start in range(0, len(clients), concurrency):
        batch = clients[start : start + concurrency]
        await asyncio.gather(*(c.close() for c in batch), return_exceptions=True)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    kernel_id = args.kernel or str(uuid.uuid4())
    headers = {"Authorization": f"token {args.token}"} if args.token else None
    async with http_session() as http:
        if args.workload == "idle":
            clients = await open_many(http, args.client, args.url, kernel_id, args.sessions)
            try:
                await asyncio.sleep(args.hold)
            finally:
                await close_all(clients)
            return {"sessions": len(clients), "held_seconds": args.hold}
        client = await connect_client(http, args.client, args.url, kernel_id, headers)
        try:
            if args.workload == "echo":
                samples = await echo_round_trips(client, args.count, time_limit=args.timeout)
                return {
                    "rounds": len(samples),
                    "p50_us": percentile(samples, 50) * 1e6,
                    "p99_us": percentile(samples, 99) * 1e6,
                }
            result = await stream_workload(
                client, args.workload, args.count, args.size, args.rate, args.timeout
            )
            return {**asdict(result), "msgs_per_s": result.msgs_per_s, "mb_per_s": result.mb_per_s}
        finally:
            await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One kernel-websocket measurement.")
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of the hop to test")
    parser.add_argument("--client", choices=CLIENT_KINDS, default="channels-json")
    parser.add_argument("--workload", choices=("flood", "paced", "echo", "idle"), default="flood")
    parser.add_argument("--kernel", help="kernel id (default: a new UUID, fine for the stub)")
    parser.add_argument("--token", help="jupyter_server token, sent as Authorization header")
    parser.add_argument("--count", type=int, default=10_000, help="messages or round trips")
    parser.add_argument("--size", type=int, default=300, help="stream content bytes")
    parser.add_argument("--rate", type=float, default=20_000.0, help="paced messages/s")
    parser.add_argument("--sessions", type=int, default=100, help="idle clients to hold")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold idle clients")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per workload")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_main(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
