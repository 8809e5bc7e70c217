"""LegacySession: the legacy sockets of one (kernel, session) merged into ONE upstream websocket.

Lifecycle (``SessionState``)::

    connecting ──> open ──(upstream lost)──> reconnecting ──> open ...
        │            │                             │
        └────────────┴──> draining (SIGTERM) ──────┴──> closed

Every fault ends in exactly one of three places: ``_run_upstream`` (the upstream side),
``from_client`` (a bad client frame) or ``close``/``drain`` (the end of the session).

Data path: one task reads the upstream and writes each message straight to its legacy
socket (no queue hop on the hot path). Messages for a socket that is not attached are held
per channel, in order; client requests that cannot go upstream yet are queued. Both count
against one per-session byte budget (``limits.pending_bytes``); when it is spent the side
that produces them is no longer read, so TCP pushes back instead of memory growing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from ..metrics import RELAY_LATENCY_SAMPLE, ProxyMetrics
from ..tcp import QuickAck
from ..wire.adapt import SpecAdapter
from ..wire.errors import WireError
from ..wire.json_framing import decode_json_frame, encode_json_frame
from ..wire.message import (
    KernelMessage,
    client_message_to_kernel,
    legacy_text,
    parse_client_message,
)
from ..wire.v1 import decode_v1, encode_v1
from .client_socket import LegacySocket
from .upstream import (
    V1_SUBPROTOCOL,
    UpstreamRefused,
    UpstreamTarget,
    UpstreamUnavailable,
    open_upstream,
)

log = logging.getLogger("proxy.legacy")

LEGACY_CHANNELS = ("shell", "iopub", "stdin")

# Queued output past this is written at once instead of at the end of the batch.
FLUSH_BYTES = 256 * 1024

# Close codes sent to legacy clients.
CLOSE_UPSTREAM_REFUSED = 1008  # policy violation: credentials refused upstream
CLOSE_UPSTREAM_ERROR = 1011  # unknown kernel, upstream gone for good, malformed upstream frame
CLOSE_SERVICE_RESTART = 1012
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009


class SessionState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The limits one session runs with (taken from the config when it opens)."""

    pending_bytes: int
    grace_period: float
    reconnect_attempts: int
    reconnect_initial_delay: float
    reconnect_max_delay: float
    close_style: str
    msg_spec: str

    def backoff(self, attempt: int) -> float:
        """Delay before reconnect attempt number `attempt` (1-based), doubling to a ceiling."""
        delay = self.reconnect_initial_delay * (2 ** max(attempt - 1, 0))
        return min(delay, self.reconnect_max_delay)


class Outlet:
    """One legacy channel: its socket (if attached) and what is held for it, in order."""

    __slots__ = (
        "broken",
        "channel",
        "flushing",
        "forwarded",
        "forwarded_bytes",
        "held",
        "received",
        "sent",
        "sent_bytes",
        "sock",
    )

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sock: LegacySocket | None = None
        self.broken = False  # the attached socket failed a write; wait for its replacement
        self.held: deque[bytes] = deque()
        self.flushing = False
        self.sent = 0
        self.sent_bytes = 0
        self.received = 0  # frames the client sent on this socket
        self.forwarded = 0  # of those, sent upstream
        self.forwarded_bytes = 0


class LegacySession:
    """Three legacy sockets of one (kernel_id, session_id) and their one upstream websocket."""

    def __init__(
        self,
        key: tuple[str, str, str],
        settings: SessionSettings,
        target: UpstreamTarget,
        client: aiohttp.ClientSession,
        metrics: ProxyMetrics,
        on_closed: Callable[[LegacySession], None],
    ) -> None:
        self.key = key
        self.route_prefix, self.kernel_id, self.session_id = key
        self.settings = settings
        self.target = target
        self.state = SessionState.CONNECTING
        self.adapter = SpecAdapter(settings.msg_spec)
        self.outlets = {channel: Outlet(channel) for channel in LEGACY_CHANNELS}
        self.to_upstream: deque[tuple[KernelMessage, int]] = deque()
        self.pending = 0
        self.created = time.time()
        self.upstream_connects = 0
        self.dropped: dict[str, int] = {}
        self.close_reason = ""
        self._client = client
        self._metrics = metrics
        self._on_closed = on_closed
        self._upstream: aiohttp.ClientWebSocketResponse | None = None
        self._v1 = True
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._latency = metrics.relay_latency
        self._loop = asyncio.get_running_loop()
        self._turn_end_scheduled = False
        self._quick: QuickAck | None = None

    # -- public API used by the handler and the registry ---------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def start(self) -> None:
        self._task = asyncio.create_task(self._run_upstream(), name=f"upstream {self.key}")

    def attach(self, channel: str, sock: LegacySocket, target: UpstreamTarget) -> None:
        """A legacy socket introduced itself; a newer socket for a channel replaces the older."""
        outlet = self.outlets[channel]
        old = outlet.sock
        outlet.sock = sock
        outlet.broken = False
        self.target = target  # the freshest credentials serve any later reconnect
        self._metrics.legacy_sockets.labels(channel).inc()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
            log.info("session resumed kernel=%s session=%s", self.kernel_id, self.session_id)
        if old is not None and old is not sock:
            self._metrics.legacy_sockets.labels(channel).dec()
            self._spawn(old.close(1000, "replaced by a newer connection", "clean"))
        if outlet.held and not outlet.flushing:
            self._spawn(self._flush(outlet))

    def detach(self, channel: str, sock: LegacySocket) -> None:
        """A legacy socket went away; with none left, wait out the grace period."""
        outlet = self.outlets[channel]
        if outlet.sock is not sock:
            return  # already replaced
        self._reclaim(outlet)
        outlet.sock = None
        self._metrics.legacy_sockets.labels(channel).dec()
        if self.state in (SessionState.DRAINING, SessionState.CLOSED):
            return
        if any(o.sock is not None for o in self.outlets.values()):
            return
        grace = self.settings.grace_period
        if grace <= 0:
            self._spawn(self.close(1000, "all client sockets closed", why="clients_gone"))
            return
        log.info(
            "session detached kernel=%s session=%s grace=%.1fs",
            self.kernel_id,
            self.session_id,
            grace,
        )
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(grace, self._grace_expired)

    async def from_client(self, channel: str, data: bytes | str) -> None:
        """A frame from a legacy socket, after its handshake: tag, adapt and send upstream."""
        if self.state is SessionState.CLOSED:
            return
        outlet = self.outlets[channel]
        outlet.received += 1
        if channel == "iopub":
            self._drop("client_iopub")  # the old server ignored these too
            return
        try:
            msg = parse_client_message(data)
            msg = self._adapt_from_client(msg)
        except WireError as exc:
            log.warning(
                "bad client frame kernel=%s session=%s channel=%s: %s",
                self.kernel_id,
                self.session_id,
                channel,
                exc.reason,
            )
            await self.close(exc.close_code, exc.reason, why="bad_client_frame")
            return
        kernel_msg = client_message_to_kernel(msg, channel)
        if self.state is SessionState.DRAINING:
            self._drop("shutdown")
            return
        size = len(data)
        ws = self._upstream
        if ws is not None and not self.to_upstream and self.state is SessionState.OPEN:
            try:
                await self._send_upstream(ws, kernel_msg)
                outlet.forwarded += 1
                outlet.forwarded_bytes += size
                return
            except (ConnectionError, RuntimeError):
                pass  # the upstream reader notices the loss and reconnects; keep the message
        self.to_upstream.append((kernel_msg, size))
        self.pending += size
        await self._wait_for_space()

    def _adapt_from_client(self, msg: dict[str, Any]) -> dict[str, Any]:
        """v4 -> v5 when adapting. A malformed request raises WireError; anything else the
        adapter trips over is counted and the message goes upstream as the client wrote it."""
        try:
            return self.adapter.from_client(msg)
        except WireError:
            raise
        except Exception as exc:  # jupyter_client's adapter is not ours: never let it kill us
            self._metrics.adaptation_failures.labels("to_upstream").inc()
            log.warning("could not adapt %s to v5: %r", msg["header"].get("msg_type"), exc)
            return msg

    async def reject_client_frame(self, close_code: int, reason: str) -> None:
        log.warning(
            "refused client frame kernel=%s session=%s: %s", self.kernel_id, self.session_id, reason
        )
        await self.close(close_code, reason, why="bad_client_frame")

    def traffic(self) -> list[tuple[str, str, int, int]]:
        """(channel, direction, messages, bytes) for the metrics collector."""
        rows = [(c, "to_client", o.sent, o.sent_bytes) for c, o in self.outlets.items()]
        rows += [
            (c, "to_upstream", o.forwarded, o.forwarded_bytes)
            for c, o in self.outlets.items()
            if c != "iopub"
        ]
        return rows

    def snapshot(self) -> dict[str, object]:
        """What /status shows about this session."""
        return {
            "kernel_id": self.kernel_id,
            "session_id": self.session_id,
            "route": self.route_prefix,
            "state": self.state.value,
            "age_seconds": round(time.time() - self.created, 1),
            "attached": [c for c, o in self.outlets.items() if o.sock is not None],
            "msg_spec": "4" if self.adapter.adapting else "5",
            "messages_to_client": {c: o.sent for c, o in self.outlets.items()},
            "messages_from_client": {c: o.received for c, o in self.outlets.items()},
            "held_messages": {c: len(o.held) for c, o in self.outlets.items()},
            "queued_to_upstream": len(self.to_upstream),
            "pending_bytes": self.pending,
            "upstream_connects": self.upstream_connects,
            "dropped": dict(self.dropped),
        }

    # -- ending ----------------------------------------------------------------------------

    async def close(
        self, code: int, reason: str, *, style: str = "clean", why: str = "closed"
    ) -> None:
        """End the session now: upstream closed, every legacy socket closed with code+reason."""
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        self._cancel_grace()
        self._space.set()  # release waiters now, not after the upstream close
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        ws = self._upstream
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(code=1000), timeout=5)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        await self._end(code, reason, style, why)

    async def drain(self, code: int = CLOSE_SERVICE_RESTART, reason: str = "proxy restarting"):
        """Graceful stop: close upstream first, deliver what it still sends, then the clients."""
        if self.state in (SessionState.CLOSED, SessionState.DRAINING):
            return
        self.state = SessionState.DRAINING
        self._cancel_grace()
        ws = self._upstream
        task = self._task
        if ws is not None and not ws.closed and task is not None:
            # Send our close but keep reading: everything the server wrote before it saw the
            # close reaches the clients; jupyter_server buffers the rest for this session id.
            try:
                payload = struct.pack("!H", CLOSE_GOING_AWAY) + b"proxy restarting"
                await ws.send_frame(payload, WSMsgType.CLOSE)
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError):
                pass
        if task is not None and not task.done():
            task.cancel()
        for outlet in self.outlets.values():
            await self._flush(outlet)
        self.state = SessionState.CLOSED
        await self._end(code, reason, self.settings.close_style, "shutdown")

    def _grace_expired(self) -> None:
        self._grace = None
        if any(o.sock is not None for o in self.outlets.values()):
            return
        self._spawn(self.close(1000, "grace period over", why="grace_expired"))

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    async def _end(self, code: int, reason: str, style: str, why: str) -> None:
        """The last step of close() and drain(): release waiters, close the legacy sockets."""
        self.close_reason = reason
        self._space.set()
        sockets = [o.sock for o in self.outlets.values() if o.sock is not None]
        await asyncio.gather(
            *(sock.close(code, reason, style) for sock in sockets), return_exceptions=True
        )
        self._finish(why)

    def _finish(self, why: str) -> None:
        lost = sum(len(o.held) for o in self.outlets.values()) + len(self.to_upstream)
        if lost:
            self._drop(f"{why}_undelivered", lost)
        for outlet in self.outlets.values():
            outlet.held.clear()
        self.to_upstream.clear()
        self.pending = 0
        self._metrics.session_closes.labels(why).inc()
        self._metrics.traffic.retire(self)
        log.info(
            "session closed kernel=%s session=%s why=%s reason=%r age=%.1fs to_client=%s "
            "from_client=%s upstream_connects=%d dropped=%s",
            self.kernel_id,
            self.session_id,
            why,
            self.close_reason,
            time.time() - self.created,
            {c: o.sent for c, o in self.outlets.items()},
            {c: o.received for c, o in self.outlets.items()},
            self.upstream_connects,
            self.dropped or {},
        )
        self._on_closed(self)

    # -- upstream side ---------------------------------------------------------------------

    async def _run_upstream(self) -> None:
        attempt = 0
        try:
            while self.state not in (SessionState.DRAINING, SessionState.CLOSED):
                try:
                    ws = await open_upstream(self._client, self.target)
                except UpstreamRefused as exc:
                    log.warning(
                        "upstream refused kernel=%s session=%s: %s",
                        self.kernel_id,
                        self.session_id,
                        exc.reason,
                    )
                    code = (
                        CLOSE_UPSTREAM_REFUSED if exc.status in (401, 403) else CLOSE_UPSTREAM_ERROR
                    )
                    self._metrics.upstream_reconnects.labels("refused").inc()
                    await self.close(code, exc.reason, why="upstream_refused")
                    return
                except UpstreamUnavailable as exc:
                    attempt += 1
                    if attempt > self.settings.reconnect_attempts:
                        reason = f"upstream unavailable after {attempt} attempts"
                        log.error(
                            "%s kernel=%s session=%s: %s",
                            reason,
                            self.kernel_id,
                            self.session_id,
                            exc,
                        )
                        self._metrics.upstream_reconnects.labels("gave_up").inc()
                        await self.close(
                            CLOSE_UPSTREAM_ERROR,
                            reason,
                            style=self.settings.close_style,
                            why="upstream_unavailable",
                        )
                        return
                    delay = self.settings.backoff(attempt)
                    log.warning(
                        "upstream connect failed kernel=%s session=%s attempt=%d retry=%.2fs: %s",
                        self.kernel_id,
                        self.session_id,
                        attempt,
                        delay,
                        exc,
                    )
                    self._metrics.upstream_reconnects.labels("failed").inc()
                    await asyncio.sleep(delay)
                    continue
                if self.state in (SessionState.DRAINING, SessionState.CLOSED):
                    await ws.close()
                    return
                attempt = 0
                await self._serve_upstream(ws)
                if self.state in (SessionState.DRAINING, SessionState.CLOSED):
                    return
                self.state = SessionState.RECONNECTING
                log.warning(
                    "upstream lost kernel=%s session=%s code=%s; reconnecting",
                    self.kernel_id,
                    self.session_id,
                    ws.close_code,
                )
                attempt = 1
                await asyncio.sleep(self.settings.backoff(1) / 2)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session failed kernel=%s session=%s", self.kernel_id, self.session_id)
            await self.close(CLOSE_UPSTREAM_ERROR, "internal proxy error", why="internal_error")

    async def _serve_upstream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._upstream = ws
        self._v1 = ws.protocol == V1_SUBPROTOCOL
        self.upstream_connects += 1
        if self.upstream_connects > 1:
            self._metrics.upstream_reconnects.labels("ok").inc()
            log.info("upstream reconnected kernel=%s session=%s", self.kernel_id, self.session_id)
        if self.state is not SessionState.DRAINING:
            self.state = SessionState.OPEN
        gauge = self._metrics.upstream_connections.labels("legacy")
        gauge.inc()
        try:
            await self._flush_to_upstream(ws)
            await self._read_upstream(ws)
        finally:
            self._upstream = None
            gauge.dec()
            if not ws.closed:
                try:
                    await asyncio.wait_for(ws.close(), timeout=2)
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass

    async def _flush_to_upstream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while self.to_upstream and self._upstream is ws:
            kernel_msg, size = self.to_upstream[0]
            await self._send_upstream(ws, kernel_msg)
            self.to_upstream.popleft()
            self.pending -= size
            outlet = self.outlets[kernel_msg.channel]
            outlet.forwarded += 1
            outlet.forwarded_bytes += size
            self._release_space()

    async def _send_upstream(
        self, ws: aiohttp.ClientWebSocketResponse, kernel_msg: KernelMessage
    ) -> None:
        if self._v1:
            await ws.send_frame(encode_v1(kernel_msg), WSMsgType.BINARY)
        else:
            frame = encode_json_frame(kernel_msg)
            if isinstance(frame, str):
                await ws.send_frame(frame.encode(), WSMsgType.TEXT)
            else:
                await ws.send_frame(frame, WSMsgType.BINARY)
        # Sending right after receiving puts Linux into delayed-ACK ("pingpong") mode, and the
        # reply's first segment would then wait for our ACK timer (Nagle on the server side).
        quick = self._quick
        if quick is not None:
            quick.arm()

    async def _read_upstream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._quick = QuickAck.for_upstream(ws)
        v1 = self._v1
        receive = ws.receive
        to_client = self._to_client
        until_sample = RELAY_LATENCY_SAMPLE
        try:
            while True:
                msg = await receive()
                kind = msg.type
                if kind is WSMsgType.BINARY or kind is WSMsgType.TEXT:
                    try:
                        if v1 and kind is WSMsgType.BINARY:
                            kernel_msg = decode_v1(msg.data)
                        else:
                            kernel_msg = decode_json_frame(msg.data)
                    except WireError as exc:
                        await self._upstream_frame_refused(exc)
                        return
                    until_sample -= 1
                    if until_sample:
                        await to_client(kernel_msg)
                    else:
                        until_sample = RELAY_LATENCY_SAMPLE
                        started = time.perf_counter()
                        await to_client(kernel_msg)
                        self._latency.observe(time.perf_counter() - started)
                elif kind is WSMsgType.CLOSE:
                    try:
                        await asyncio.wait_for(ws.close(), timeout=2)
                    except (TimeoutError, aiohttp.ClientError, OSError):
                        pass
                    return
                elif kind is WSMsgType.ERROR and getattr(msg.data, "code", None) == CLOSE_TOO_BIG:
                    # Reconnecting would only lose this message silently: say so and stop.
                    reason = (
                        "kernel message larger than limits.max_message_bytes "
                        f"({self.target.max_msg_size} bytes)"
                    )
                    log.error("%s kernel=%s session=%s", reason, self.kernel_id, self.session_id)
                    await self.close(CLOSE_TOO_BIG, reason, why="upstream_message_too_big")
                    return
                elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
        finally:
            quick, self._quick = self._quick, None
            if quick is not None:
                quick.close()

    async def _upstream_frame_refused(self, exc: WireError) -> None:
        log.error(
            "malformed upstream frame kernel=%s session=%s: %s",
            self.kernel_id,
            self.session_id,
            exc.reason,
        )
        await self.close(
            CLOSE_UPSTREAM_ERROR,
            f"malformed frame from upstream: {exc.reason}",
            why="bad_upstream_frame",
        )

    # -- client side -----------------------------------------------------------------------

    async def _to_client(self, kernel_msg: KernelMessage) -> None:
        outlet = self.outlets.get(kernel_msg.channel)
        if outlet is None:
            self._drop(f"{kernel_msg.channel}_channel")  # control has no legacy socket
            return
        try:
            data = self.adapter.to_client(kernel_msg)
        except Exception as exc:  # deliver unadapted rather than lose the message
            self._metrics.adaptation_failures.labels("to_client").inc()
            log.warning("could not adapt a %s message to v4: %r", kernel_msg.channel, exc)
            data = legacy_text(kernel_msg)
        if kernel_msg.buffers:
            self._drop("binary_buffers")
        sock = outlet.sock
        if sock is not None and not outlet.held and not outlet.broken:
            if sock.queue_text(data):
                await self._sent(outlet, sock, len(data))
                return
            outlet.broken = True
        outlet.held.append(data)
        self.pending += len(data)
        if outlet.sock is not None and not outlet.broken and not outlet.flushing:
            self._spawn(self._flush(outlet))
        await self._wait_for_space()

    async def _sent(self, outlet: Outlet, sock: LegacySocket, size: int) -> bool:
        """Account for a frame queued on `sock`; write at the end of the batch, or now if the
        queue is large or the client is behind. False if the socket went away meanwhile."""
        outlet.sent += 1
        outlet.sent_bytes += size
        if not self._turn_end_scheduled:
            self._turn_end_scheduled = True
            self._loop.call_soon(self._end_turn)
        if sock.queued_bytes > FLUSH_BYTES or sock.congested:
            try:
                await sock.drain()
            except ConnectionError:
                return False  # the handler sees the socket go and detaches it
        return True

    def _end_turn(self) -> None:
        """After a batch of upstream messages: one write per socket, and ACK the upstream."""
        self._turn_end_scheduled = False
        for outlet in self.outlets.values():
            if outlet.sock is not None and not outlet.sock.flush():
                self._reclaim(outlet)
        quick = self._quick
        if quick is not None and not quick.arm():
            quick.close()
            self._quick = None

    def _reclaim(self, outlet: Outlet) -> None:
        """Take back frames queued on a socket that went away; they are the oldest we have."""
        sock = outlet.sock
        if sock is None:
            return
        payloads = sock.take_queued()
        if not payloads:
            return
        outlet.broken = True
        outlet.held.extendleft(reversed(payloads))
        size = sum(len(p) for p in payloads)
        self.pending += size
        outlet.sent -= len(payloads)
        outlet.sent_bytes -= size

    async def _flush(self, outlet: Outlet) -> None:
        """Deliver what was held for a socket that has (re)attached, oldest first."""
        if outlet.flushing:
            return
        outlet.flushing = True
        try:
            while outlet.held:
                sock = outlet.sock
                if sock is None or outlet.broken:
                    return
                data = outlet.held[0]
                if not sock.queue_text(data):
                    outlet.broken = True
                    return
                outlet.held.popleft()
                self.pending -= len(data)
                self._release_space()
                if not await self._sent(outlet, sock, len(data)):
                    return
        finally:
            outlet.flushing = False

    # -- budget ----------------------------------------------------------------------------

    async def _wait_for_space(self) -> None:
        limit = self.settings.pending_bytes
        while self.pending > limit and self.state is not SessionState.CLOSED:
            self._space.clear()
            await self._space.wait()

    def _release_space(self) -> None:
        if self.pending <= self.settings.pending_bytes:
            self._space.set()

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self._metrics.dropped.labels(reason).inc(count)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
