"""A fault-injecting TCP relay on loopback that tests put between two real peers.

It forwards bytes both ways and lets the test break things for real: `cut("close")` ends
every current connection with an orderly FIN, `cut("reset")` with a TCP RST (SO_LINGER 0),
`pause()` stops forwarding (the peers' socket buffers fill and TCP pushes back) until
`resume()`. New connections are accepted all the while. The relay runs its own event loop
in a thread, so tests drive it with plain calls from any loop or thread::

    relay = FaultRelay(("127.0.0.1", jupyter.port)).start()
    ... point the proxy at relay.url ...
    relay.cut("reset")
    await relay.wait_accepted(2)
    relay.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

CutMode = Literal["close", "reset"]
CHUNK_BYTES = 64 * 1024


class RelayError(RuntimeError):
    """The relay could not start or was used in a way it does not support."""


@dataclass
class RelayConnection:
    """One accepted client connection and its connection to the target."""

    number: int
    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sides(self) -> tuple[asyncio.StreamWriter, asyncio.StreamWriter]:
        return (self.client, self.target)


@dataclass
class RelayStats:
    """What the relay has seen since it started."""

    accepted: int = 0
    cuts: int = 0
    connections_cut: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0


class FaultRelay:
    """A TCP relay from 127.0.0.1:<port> to `target`, with faults on command."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        if target[0] not in ("127.0.0.1", "localhost"):
            raise RelayError(f"the relay only forwards to loopback, not {target[0]}")
        self.target = target
        self.port = port
        self.stats = RelayStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._connections: dict[int, RelayConnection] = {}
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def active(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._connections)

    def start(self, timeout: float = 10.0) -> FaultRelay:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-relay->{self.target}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            raise RelayError(f"relay did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------

    def cut(self, mode: CutMode = "close", timeout: float = 10.0) -> int:
        """End every current connection (FIN or RST on both sides); returns how many."""
        if mode not in ("close", "reset"):
            raise RelayError(f"cut mode must be 'close' or 'reset', not {mode!r}")
        return self._call(self._cut(mode), timeout)

    def pause(self) -> None:
        """Stop forwarding in both directions until resume(); connections stay open."""
        self._call(self._set_flowing(False), 10.0)

    def resume(self) -> None:
        self._call(self._set_flowing(True), 10.0)

    async def wait_accepted(self, count: int, timeout: float = 30.0) -> int:
        """Wait (from any event loop) until `count` connections have been accepted in total."""
        deadline = time.monotonic() + timeout
        while self.stats.accepted < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay accepted {self.stats.accepted}, not {count}")
            await asyncio.sleep(0.02)
        return self.stats.accepted

    async def wait_active(self, count: int, timeout: float = 30.0) -> None:
        """Wait until exactly `count` connections are open."""
        deadline = time.monotonic() + timeout
        while self.active != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay has {self.active} open connections, not {count}")
            await asyncio.sleep(0.02)

    # -- relay loop (runs in the relay thread) -----------------------------------------------

    def _call(self, coro, timeout: float):  # type: ignore[no-untyped-def]
        if self._loop is None:
            coro.close()
            raise RelayError("relay is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)  # the target is down: the client sees a refused-like reset
            return
        with self._lock:
            self.stats.accepted += 1
            number = self.stats.accepted
            conn = RelayConnection(number, writer, target_writer)
            self._connections[number] = conn
        conn.tasks = [
            asyncio.create_task(self._pump(reader, target_writer, "bytes_to_target")),
            asyncio.create_task(self._pump(target_reader, writer, "bytes_to_client")),
        ]
        try:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            with self._lock:
                self._connections.pop(number, None)
            for side in (writer, target_writer):
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other direction may still be talking
        except (ConnectionError, OSError):
            # One side reset: pass the reset on, as a real network path would.
            with self._lock:
                conn = next((c for c in self._connections.values() if writer in c.sides), None)
            if conn is not None:
                for side in conn.sides:
                    _reset(side)
                for task in conn.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()

    async def _cut(self, mode: CutMode) -> int:
        with self._lock:
            victims = list(self._connections.values())
            self.stats.cuts += 1
            self.stats.connections_cut += len(victims)
        for conn in victims:
            for task in conn.tasks:
                task.cancel()
            for side in conn.sides:
                if mode == "reset":
                    _reset(side)
                else:
                    side.close()
        for conn in victims:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        return len(victims)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut("close")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, timeout 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
