"""A legacy kernel client that speaks exactly as IPython 2.x's kernel.js does.

Three websockets (shell, stdin, iopub, opened in that order), each introduced by one text
frame ``"<session_id>:<cookie string>"``; then msg spec v4 JSON text frames with no
``channel`` key. Everything received is kept per channel, in order, for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHANNELS = ("shell", "stdin", "iopub")


def kernel_js_session_id() -> str:
    """A session id shaped like kernel.js 2.x's utils.uuid(): 32 uppercase hex, 17th is '8'."""
    digits = secrets.token_hex(16).upper()
    return digits[:16] + "8" + digits[17:]


@dataclass
class ExecuteResult:
    reply: dict[str, Any]
    iopub: list[dict[str, Any]] = field(default_factory=list)
    input_requests: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, *msg_types: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["header"]["msg_type"] in msg_types]

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"].get("data", m["content"].get("text", ""))
            for m in self.of_type("stream")
            if m["content"].get("name") == "stdout"
        )


@dataclass
class Closed:
    code: int | None
    reason: str


class LegacyKernelClient:
    """Three legacy sockets for one kernel and one session id, like a Kernel object in kernel.js."""

    def __init__(
        self,
        base_ws_url: str,
        kernel_id: str,
        *,
        session_id: str | None = None,
        cookie: str = "",
        token: str | None = None,
        headers: dict[str, str] | None = None,
        path_form: str = "api/kernels",
        version: str | None = None,
        max_msg_size: int = 256 * 1024 * 1024,
    ) -> None:
        self.base = base_ws_url.rstrip("/")
        self.kernel_id = kernel_id
        self.session_id = session_id or kernel_js_session_id()
        self.cookie = cookie
        self.token = token
        self.headers = dict(headers or {})
        self.path_form = path_form
        self.version = version  # None: v4 headers (no version key), as kernel.js 2.x sends
        self.max_msg_size = max_msg_size
        self.http: aiohttp.ClientSession | None = None
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.received: dict[str, list[dict[str, Any]]] = {c: [] for c in CHANNELS}
        self.raw: dict[str, list[str]] = {c: [] for c in CHANNELS}
        self.closed: dict[str, Closed] = {}
        self._new = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []
        self.paused = asyncio.Event()
        self.paused.set()

    def url(self, channel: str) -> str:
        url = f"{self.base}/{self.path_form}/{self.kernel_id}/{channel}"
        if self.token:
            url += f"?token={self.token}"
        return url

    async def connect(self, channels: tuple[str, ...] = CHANNELS, handshake: bool = True) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        for channel in channels:
            ws = await self.http.ws_connect(
                self.url(channel),
                headers=self.headers,
                max_msg_size=self.max_msg_size,
                autoping=True,
            )
            self.sockets[channel] = ws
            self.closed.pop(channel, None)
            if handshake:
                await ws.send_str(f"{self.session_id}:{self.cookie}")
            self._readers.append(asyncio.create_task(self._read(channel, ws)))

    async def _read(self, channel: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self.paused.wait()
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.raw[channel].append(msg.data)
                parsed = orjson.loads(msg.data)
                async with self._new:
                    self.received[channel].append(parsed)
                    self._new.notify_all()
            elif msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                code = ws.close_code if msg.type is not aiohttp.WSMsgType.CLOSE else msg.data
                reason = msg.extra if msg.type is aiohttp.WSMsgType.CLOSE else ""
                async with self._new:
                    self.closed[channel] = Closed(code, reason or "")
                    self._new.notify_all()
                return

    def make_msg(self, msg_type: str, content: dict[str, Any], metadata: dict | None = None):
        header: dict[str, Any] = {
            "msg_id": uuid.uuid4().hex.upper(),
            "username": "username",
            "session": self.session_id,
            "msg_type": msg_type,
        }
        if self.version:
            header["version"] = self.version
        return {
            "header": header,
            "metadata": metadata or {},
            "content": content,
            "parent_header": {},
        }

    async def send(self, channel: str, msg: dict[str, Any]) -> str:
        await self.sockets[channel].send_str(orjson.dumps(msg).decode())
        return str(msg["header"]["msg_id"])

    async def send_shell(self, msg_type: str, content: dict[str, Any]) -> str:
        return await self.send("shell", self.make_msg(msg_type, content))

    async def wait_for(
        self, channel: str, predicate: Any, timeout: float = 30.0, start: int = 0
    ) -> dict[str, Any]:
        """The first message on `channel` (from index `start`) matching predicate."""
        deadline = time.monotonic() + timeout
        index = start
        async with self._new:
            while True:
                messages = self.received[channel]
                while index < len(messages):
                    if predicate(messages[index]):
                        return messages[index]
                    index += 1
                if channel in self.closed:
                    raise ConnectionError(f"{channel} closed: {self.closed[channel]}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message on {channel} within {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new.wait(), remaining)

    async def wait_closed(self, channel: str, timeout: float = 30.0) -> Closed:
        deadline = time.monotonic() + timeout
        async with self._new:
            while channel not in self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{channel} still open after {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new.wait(), remaining)
            return self.closed[channel]

    async def request(self, msg_type: str, content: dict[str, Any], timeout: float = 30.0):
        """Send a shell request and return its reply."""
        msg_id = await self.send_shell(msg_type, content)
        return await self.wait_for(
            "shell", lambda m: m.get("parent_header", {}).get("msg_id") == msg_id, timeout
        )

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Nudge with kernel_info_request until one is answered on iopub as well as shell.

        After a kernel restart the server's iopub subscription reconnects to the new kernel
        process a little later than shell does, and what the kernel publishes meanwhile is
        gone (ZMQ's slow joiner); jupyter_server nudges new connections the same way.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = await self.send_shell("kernel_info_request", {})
            try:
                await self.wait_for(
                    "iopub",
                    lambda m, sent=msg_id: m["parent_header"].get("msg_id") == sent,
                    timeout=1.0,
                )
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"kernel not answering on iopub after {timeout}s")

    async def execute(
        self,
        code: str,
        *,
        silent: bool = False,
        stdin_answers: list[str] | None = None,
        timeout: float = 60.0,
    ) -> ExecuteResult:
        """Run code as the notebook does and collect its reply and iopub output until idle."""
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_variables": [],
            "user_expressions": {},
            "allow_stdin": stdin_answers is not None,
        }
        msg_id = await self.send_shell("execute_request", content)

        def is_child(m: dict[str, Any]) -> bool:
            return m.get("parent_header", {}).get("msg_id") == msg_id

        result = ExecuteResult(reply={})
        answers = list(stdin_answers or [])
        deadline = time.monotonic() + timeout
        stdin_seen = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"execute did not finish within {timeout}s")
            if answers:
                request = await self.wait_for("stdin", is_child, remaining, start=stdin_seen)
                stdin_seen = self.received["stdin"].index(request) + 1
                result.input_requests.append(request)
                reply = self.make_msg("input_reply", {"value": answers.pop(0)})
                reply["parent_header"] = request["header"]
                await self.send("stdin", reply)
                continue
            break
        result.reply = await self.wait_for("shell", is_child, max(deadline - time.monotonic(), 0.1))
        await self.wait_for(
            "iopub",
            lambda m: (
                is_child(m)
                and m["header"]["msg_type"] == "status"
                and m["content"].get("execution_state") == "idle"
            ),
            max(deadline - time.monotonic(), 0.1),
        )
        result.iopub = [m for m in self.received["iopub"] if is_child(m)]
        return result

    async def close(self) -> None:
        for ws in self.sockets.values():
            with contextlib.suppress(Exception):
                await ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._readers.clear()
        self.sockets.clear()
        if self.http is not None:
            await self.http.close()
            self.http = None

    async def __aenter__(self) -> LegacyKernelClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
