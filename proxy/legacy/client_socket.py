"""LegacySocket: one legacy client websocket, written with one syscall per event-loop turn.

Upstream reads usually carry many kernel messages at once (a flood of output arrives in
64 KiB reads). aiohttp's `send_frame` issues one `send()` per message, which costs more
than everything else the proxy does for a small message. Here each text frame is built
in place (a server frame is just a 2-10 byte header and the payload, never masked) and
queued; the session flushes every socket it wrote to once the current batch has been
handled, so one write carries the whole batch. Ordering is kept because every data
frame to this socket goes through this queue, and anything that closes the socket
flushes it first.
"""

from __future__ import annotations

import struct

from aiohttp import web

from .closing import close_legacy_socket

_TEXT_FIN = 0x81
_SHORT = struct.Struct("!BB").pack
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack


def text_frame_header(length: int) -> bytes:
    """The RFC 6455 header of an unmasked, final text frame carrying `length` bytes."""
    if length < 126:
        return _SHORT(_TEXT_FIN, length)
    if length < 65536:
        return _MEDIUM(_TEXT_FIN, 126, length)
    return _LONG(_TEXT_FIN, 127, length)


class LegacySocket:
    """A prepared legacy websocket and the text frames queued for it."""

    __slots__ = ("_chunks", "_protocol", "_queued", "_transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.BaseRequest) -> None:
        self.ws = ws
        self._transport = request.transport
        self._protocol = request.protocol
        self._chunks: list[bytes] = []
        self._queued = 0

    @property
    def writable(self) -> bool:
        transport = self._transport
        return not self.ws.closed and transport is not None and not transport.is_closing()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def congested(self) -> bool:
        """The client is not keeping up: the transport's buffer is over its high-water mark."""
        return self._protocol.writing_paused

    def queue_text(self, payload: bytes) -> bool:
        """Queue one text frame; False when the socket can no longer be written."""
        if not self.writable:
            return False
        self._chunks.append(text_frame_header(len(payload)))
        self._chunks.append(payload)
        self._queued += len(payload)
        return True

    def flush(self) -> bool:
        """Hand everything queued to the transport in one write.

        Returns False, keeping the frames queued, when the socket can no longer be written
        (for instance the client's close frame was just answered): the session takes them
        back with `take_queued` and holds them for the client's return.
        """
        chunks = self._chunks
        if not chunks:
            return True
        if not self.writable:
            return False
        self._chunks = []
        self._queued = 0
        self._transport.writelines(chunks)  # type: ignore[union-attr]
        return True

    def take_queued(self) -> list[bytes]:
        """Remove and return the payloads queued but not written, oldest first."""
        payloads = self._chunks[1::2]
        self._chunks = []
        self._queued = 0
        return payloads

    async def drain(self) -> None:
        """Wait while the client is slower than the kernel (TCP backpressure)."""
        self.flush()
        if self._protocol.writing_paused:
            await self._protocol._drain_helper()

    async def close(self, code: int, reason: str, style: str) -> None:
        """Write what is queued, then close with code and reason."""
        self.flush()
        await close_legacy_socket(self.ws, code, reason, style)
