"""A stub kernel server speaking jupyter_server's `/channels` websocket protocol on loopback.

It answers like jupyter_server 2 with an ipykernel behind it, but produces its traffic from
prebuilt byte templates so that it is never the slowest hop in a benchmark, and it keeps
almost no state per connection so that soak tests can hold thousands of sessions.

Framing follows the client's subprotocol: none gives the default JSON framing (text frames,
`"channel"` as the last key, `json.dumps` default separators), and
`v1.kernel.websocket.jupyter.org` gives the binary v1 framing.

Workloads, chosen by an `execute_request` whose code is `%bench <workload> key=value ...`
or by the `/channels` query string (`?workload=flood&count=1000&size=300`):

- `flood`: `count` iopub `stream` messages whose content is `size` bytes of JSON, as fast as
  the socket takes them, then an `execute_reply` on shell.
- `paced`: the same at `rate` messages per second.
- any other `execute_request` is answered at once with an `execute_reply` on shell (echo).

In-process use::

    stub = await start_stub()          # loopback, free port
    ... stub.url, stub.connections(kernel_id) ...
    await stub.stop()

CLI: `python -m bench.stub_upstream --port 8899`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_COUNT = 10_000_000
MAX_SIZE = 64 * 1024 * 1024
MAX_RATE = 1_000_000.0
MAX_WORKLOAD_SECONDS = 300.0
BENCH_PREFIX = "%bench "
_V1_OFFSETS = struct.Struct("<7Q")


class WorkloadError(ValueError):
    """A workload request the stub cannot run; the message names the bad parameter."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What a connection was asked to produce on iopub."""

    kind: str  # "flood" | "paced"
    count: int
    size: int
    rate: float = 0.0
    seconds: float = MAX_WORKLOAD_SECONDS

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Workload:
        """Build from `workload`/`count`/`size`/`rate`/`seconds` parameters."""
        kind = params.get("workload", "")
        if kind not in ("flood", "paced"):
            raise WorkloadError(f"workload must be 'flood' or 'paced', not {kind!r}")
        try:
            count = int(params.get("count", "1000"))
            size = int(params.get("size", "300"))
            rate = float(params.get("rate", "0"))
            seconds = float(params.get("seconds", str(MAX_WORKLOAD_SECONDS)))
        except ValueError as exc:
            raise WorkloadError(f"bad workload number: {exc}") from exc
        if not 0 < count <= MAX_COUNT:
            raise WorkloadError(f"count must be in 1..{MAX_COUNT}, not {count}")
        if not 32 <= size <= MAX_SIZE:
            raise WorkloadError(f"size must be in 32..{MAX_SIZE}, not {size}")
        if kind == "paced" and not 0 < rate <= MAX_RATE:
            raise WorkloadError(f"paced needs rate in (0, {MAX_RATE}], not {rate}")
        seconds = min(max(seconds, 0.1), MAX_WORKLOAD_SECONDS)
        return cls(kind, count, size, rate, seconds)

    @classmethod
    def from_code(cls, code: str) -> Workload:
        """Parse `%bench flood count=1000 size=300` (the code of an execute_request)."""
        words = code[len(BENCH_PREFIX) :].split()
        if not words:
            raise WorkloadError("'%bench' needs a workload name")
        params = {"workload": words[0]}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise WorkloadError(f"expected key=value, got {word!r}")
            params[key] = value
        return cls.from_params(params)


def utc_date() -> str:
    """A header date the way jupyter_client writes it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def dumps(obj: Any) -> bytes:
    """JSON with jupyter's default separators, as bytes."""
    return json.dumps(obj).encode()


def stream_content(size: int) -> bytes:
    """ipykernel-like stream content, `size` bytes of JSON, printable text lines."""
    empty = len(dumps({"name": "stdout", "text": ""}))
    line = "The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvw\\n"
    want = max(size - empty, 0)
    text = (line * (want // len(line) + 1))[:want]
    if text.endswith("\\"):  # never cut an escape in half
        text = text[:-1] + "."
    return b'{"name": "stdout", "text": "' + text.encode() + b'"}'


class OutboundMessages:
    """Frames of one message type from one kernel session; only msg_id and date vary."""

    __slots__ = ("_h0", "_h1", "_h2", "_json_mid", "_json_tail", "_msg_type", "_v1", "_v1_tail")

    def __init__(
        self,
        v1: bool,
        channel: str,
        msg_type: str,
        kernel_session: str,
        parent: bytes,
        metadata: bytes,
        content: bytes,
    ) -> None:
        self._v1 = v1
        self._msg_type = msg_type.encode()
        self._h0 = b'{"msg_id": "'
        self._h1 = (
            f'", "msg_type": "{msg_type}", "username": "kernel", '
            f'"session": "{kernel_session}", "date": "'
        ).encode()
        self._h2 = f'", "version": "{PROTOCOL_VERSION}"}}'.encode()
        chan = channel.encode()
        self._v1_tail = (chan, parent, metadata, content)
        self._json_mid = b'", "parent_header": ' + parent + b', "metadata": ' + metadata
        self._json_tail = (
            b', "content": ' + content + b', "buffers": [], "channel": "' + chan + b'"}'
        )

    def frame(self, msg_id: str, date: str) -> bytes:
        """One frame ready for the socket (text for JSON framing, binary for v1)."""
        mid = msg_id.encode()
        header = b"".join((self._h0, mid, self._h1, date.encode(), self._h2))
        if self._v1:
            chan, parent, metadata, content = self._v1_tail
            o1 = _V1_OFFSETS.size + len(chan)
            o2 = o1 + len(header)
            o3 = o2 + len(parent)
            o4 = o3 + len(metadata)
            o5 = o4 + len(content)
            offsets = _V1_OFFSETS.pack(6, _V1_OFFSETS.size, o1, o2, o3, o4, o5)
            return b"".join((offsets, chan, header, parent, metadata, content))
        return b"".join(
            (
                b'{"header": ',
                header,
                b', "msg_id": "',
                mid,
                b'", "msg_type": "',
                self._msg_type,
                self._json_mid,
                self._json_tail,
            )
        )


@dataclass(slots=True)
class InboundMessage:
    """The parts of a client message the stub acts on."""

    channel: str
    header: dict[str, Any]
    content: dict[str, Any]


def parse_inbound(data: bytes, v1: bool, binary: bool) -> InboundMessage | None:
    """Decode a client frame; None for anything malformed (a stub never fails on input)."""
    try:
        if v1:
            count = int.from_bytes(data[:8], "little")
            offsets = [
                int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)
            ]
            offsets.append(len(data))
            parts = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
            return InboundMessage(parts[0].decode(), json.loads(parts[1]), json.loads(parts[4]))
        if binary:  # JSON framing with buffers: !I count, !I offsets, JSON, buffers
            count = struct.unpack_from("!I", data)[0]
            offsets = struct.unpack_from(f"!{count}I", data, 4)
            end = offsets[1] if count > 1 else len(data)
            data = data[offsets[0] : end]
        msg = json.loads(data)
        return InboundMessage(msg.get("channel") or "shell", msg["header"], msg.get("content", {}))
    except (ValueError, KeyError, IndexError, TypeError, struct.error, UnicodeDecodeError):
        return None


class KernelSession:
    """Message ids and replies of the stub's one kernel-side session."""

    def __init__(self) -> None:
        self.session = str(uuid.uuid4())
        self._id_base = f"{self.session}_{os.getpid()}_"
        self._count = 0
        self.execution_count = 0

    def next_id(self) -> str:
        self._count += 1
        return self._id_base + str(self._count)

    def reply(self, v1: bool, channel: str, msg_type: str, parent: dict, content: dict) -> bytes:
        messages = OutboundMessages(
            v1, channel, msg_type, self.session, dumps(parent), b"{}", dumps(content)
        )
        return messages.frame(self.next_id(), utc_date())

    def execute_reply(self, v1: bool, parent: dict[str, Any], extra: dict | None = None) -> bytes:
        self.execution_count += 1
        content = {
            "status": "ok",
            "execution_count": self.execution_count,
            "user_expressions": {},
            "payload": [],
        }
        metadata = {
            "started": utc_date(),
            "dependencies_met": True,
            "engine": self.session,
            "status": "ok",
        }
        if extra:
            metadata["bench"] = extra
        messages = OutboundMessages(
            v1, "shell", "execute_reply", self.session, dumps(parent), dumps(metadata),
            dumps(content),
        )  # fmt: skip
        return messages.frame(self.next_id(), utc_date())


KERNEL_INFO = {
    "status": "ok",
    "protocol_version": PROTOCOL_VERSION,
    "implementation": "ipython",
    "implementation_version": "8.31.0",
    "language_info": {
        "name": "python",
        "version": "3.11.7",
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    },
    "banner": "Python 3.11.7 (stub kernel)\n",
    "help_links": [],
    "debugger": False,
}


class StubServer:
    """The running stub: its URL, connection counts and `stop()`."""

    def __init__(self) -> None:
        self.kernel = KernelSession()
        self.kernels: dict[str, int] = {}  # kernel id -> open /channels connections
        self._by_key: dict[str, web.WebSocketResponse] = {}
        self._closing: set[asyncio.Future[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app = web.Application()
        self.app.router.add_get("/api", self._api)
        self.app.router.add_get("/api/kernels", self._kernels)
        self.app.router.add_post("/api/kernels", self._new_kernel)
        self.app.router.add_get("/api/kernels/{kernel_id}", self._kernel)
        self.app.router.add_post("/api/kernels/{kernel_id}/{action:restart|interrupt}", self._act)
        self.app.router.add_get("/api/kernels/{kernel_id}/channels", self._channels)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connections(self, kernel_id: str | None = None) -> int:
        """Open `/channels` websockets (of one kernel, or of all)."""
        if kernel_id is None:
            return sum(self.kernels.values())
        return self.kernels.get(kernel_id, 0)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._by_key.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"stub stopping"), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _model(self, kernel_id: str) -> dict[str, Any]:
        return {
            "id": kernel_id,
            "name": "python3",
            "last_activity": utc_date(),
            "execution_state": "idle",
            "connections": self.kernels.get(kernel_id, 0),
        }

    async def _api(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "2.21.1"})

    async def _kernels(self, request: web.Request) -> web.Response:
        return web.json_response([self._model(k) for k in self.kernels])

    async def _new_kernel(self, request: web.Request) -> web.Response:
        kernel_id = str(uuid.uuid4())
        self.kernels.setdefault(kernel_id, 0)
        return web.json_response(self._model(kernel_id), status=201)

    async def _kernel(self, request: web.Request) -> web.Response:
        # Any UUID-shaped id exists: benchmarks invent kernel ids without a POST.
        return web.json_response(self._model(request.match_info["kernel_id"]))

    async def _act(self, request: web.Request) -> web.Response:
        if request.match_info["action"] == "restart":
            return web.json_response(self._model(request.match_info["kernel_id"]))
        return web.Response(status=204)

    async def _channels(self, request: web.Request) -> web.StreamResponse:
        kernel_id = request.match_info["kernel_id"]
        session_id = request.query.get("session_id", "")
        workload = None
        if "workload" in request.query:
            try:
                workload = Workload.from_params(dict(request.query))
            except WorkloadError as exc:
                raise web.HTTPBadRequest(text=str(exc)) from exc
        ws = web.WebSocketResponse(
            protocols=(V1_SUBPROTOCOL,),
            compress=False,
            max_msg_size=MAX_MESSAGE_BYTES,
            decode_text=False,
        )
        await ws.prepare(request)
        v1 = ws.ws_protocol == V1_SUBPROTOCOL
        key = f"{kernel_id}:{session_id}"
        stale = self._by_key.get(key)
        if stale is not None:  # jupyter_server replaces a stale connection with the same key
            closing = asyncio.ensure_future(stale.close(code=1000, message=b"replaced"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._by_key[key] = ws
        self.kernels[kernel_id] = self.kernels.get(kernel_id, 0) + 1
        task: asyncio.Task[None] | None = None
        try:
            if workload is not None:
                task = asyncio.ensure_future(self._run(ws, v1, workload, {}))
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                inbound = parse_inbound(msg.data, v1, msg.type == WSMsgType.BINARY)
                if inbound is None or inbound.channel != "shell":
                    continue
                msg_type = inbound.header.get("msg_type")
                if msg_type == "execute_request":
                    code = str(inbound.content.get("code", ""))
                    if code.startswith(BENCH_PREFIX):
                        if task is not None and not task.done():
                            continue  # one workload at a time per connection
                        try:
                            job = Workload.from_code(code)
                        except WorkloadError as exc:
                            await ws.send_frame(
                                self.kernel.execute_reply(v1, inbound.header, {"error": str(exc)}),
                                WSMsgType.BINARY if v1 else WSMsgType.TEXT,
                            )
                            continue
                        task = asyncio.ensure_future(self._run(ws, v1, job, inbound.header))
                    else:
                        await ws.send_frame(
                            self.kernel.execute_reply(v1, inbound.header),
                            WSMsgType.BINARY if v1 else WSMsgType.TEXT,
                        )
                elif msg_type == "kernel_info_request":
                    await ws.send_frame(
                        self.kernel.reply(
                            v1, "shell", "kernel_info_reply", inbound.header, KERNEL_INFO
                        ),
                        WSMsgType.BINARY if v1 else WSMsgType.TEXT,
                    )
        finally:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
            if self._by_key.get(key) is ws:
                del self._by_key[key]
            self.kernels[kernel_id] -= 1
        return ws

    async def _run(
        self, ws: web.WebSocketResponse, v1: bool, job: Workload, parent: dict[str, Any]
    ) -> None:
        opcode = WSMsgType.BINARY if v1 else WSMsgType.TEXT
        messages = OutboundMessages(
            v1, "iopub", "stream", self.kernel.session, dumps(parent), b"{}",
            stream_content(job.size),
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + job.seconds
        sent = 0
        date = utc_date()
        try:
            while sent < job.count and not ws.closed:
                now = loop.time()
                if now > deadline:
                    break
                if job.kind == "paced":
                    due = min(job.count, int((now - started) * job.rate) + 1)
                else:
                    due = min(job.count, sent + 256)
                while sent < due:
                    if sent & 63 == 0:
                        date = utc_date()
                    await ws.send_frame(messages.frame(self.kernel.next_id(), date), opcode)
                    sent += 1
                if job.kind == "paced" and sent < job.count:
                    await asyncio.sleep(max(0.0, started + sent / job.rate - loop.time()))
            stats = {"sent": sent, "seconds": round(loop.time() - started, 6)}
            if not ws.closed:
                await ws.send_frame(self.kernel.execute_reply(v1, parent, stats), opcode)
        except (ConnectionError, RuntimeError):
            return  # the client went away mid-workload


async def start_stub(host: str = "127.0.0.1", port: int = 0) -> StubServer:
    """Start a stub on the running loop (loopback, a free port unless given)."""
    stub = StubServer()
    await stub.start(host, port)
    return stub


async def _serve(port: int) -> None:
    stub = await start_stub(port=port)
    print(f"stub listening on {stub.url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await stub.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=None if args.no_uvloop else loop_factory()) as runner:
        runner.run(_serve(args.port))
    return 0


def loop_factory() -> Any:
    """uvloop's loop factory when installed, else None (the stock loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
