"""The `v1.kernel.websocket.jupyter.org` binary framing (jupyter_server's preferred subprotocol).

Frame layout: uint64 LE count n, then n uint64 LE offsets from the start of the frame,
then the parts they delimit: channel, header, parent_header, metadata, content, buffers...
The last offset is the end of the frame. The JSON parts are never parsed here.
"""

from __future__ import annotations

import functools
import operator
import struct

from proxy.wire.errors import FrameError
from proxy.wire.message import KernelMessage

SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
MAX_CHANNEL_BYTES = 32
_JSON_PARTS = 4  # header, parent_header, metadata, content
_MIN_OFFSETS = 2 + _JSON_PARTS  # channel start and end, then the end of each JSON part
_U64 = struct.Struct("<Q")


def _fail(reason: str) -> FrameError:
    return FrameError(f"v1 frame: {reason}", FrameError.PROTOCOL_ERROR)


def decode_v1(frame: bytes) -> KernelMessage:
    """Split a v1 frame into its channel, raw JSON parts and buffers."""
    size = len(frame)
    if size < 8:
        raise _fail(f"{size} bytes is shorter than its part count")
    (count,) = _U64.unpack_from(frame, 0)
    if count < _MIN_OFFSETS:
        raise _fail(f"{count} offsets, at least {_MIN_OFFSETS} needed")
    table_end = 8 * (count + 1)
    if table_end > size:
        raise _fail(f"{count} offsets do not fit in {size} bytes")
    offsets = _offsets_struct(count).unpack_from(frame, 8)
    if offsets[0] < table_end:
        raise _fail("first part starts inside the offset table")
    if offsets[-1] != size:
        raise _fail(f"last offset {offsets[-1]} is not the frame length {size}")
    if not all(map(operator.le, offsets, offsets[1:])):
        raise _fail("offsets decrease")
    start, channel_end, header_end, parent_end, metadata_end, content_end = offsets[:6]
    if not 0 < channel_end - start <= MAX_CHANNEL_BYTES:
        raise _fail(f"channel name of {channel_end - start} bytes")
    try:
        channel = frame[start:channel_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail("channel name is not UTF-8") from exc
    buffers = [frame[offsets[i] : offsets[i + 1]] for i in range(5, count - 1)] if count > 6 else []
    return KernelMessage(
        channel,
        frame[channel_end:header_end],
        frame[header_end:parent_end],
        frame[parent_end:metadata_end],
        frame[metadata_end:content_end],
        buffers,
    )


@functools.lru_cache(maxsize=64)
def _offsets_struct(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}Q")


def encode_v1(msg: KernelMessage) -> bytes:
    """Build the v1 frame for one message (the same bytes jupyter_server's serializer makes)."""
    channel = msg.channel.encode("utf-8")
    parts = [channel, msg.header, msg.parent_header, msg.metadata, msg.content, *msg.buffers]
    count = len(parts) + 1
    offsets = [8 * (count + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([struct.pack(f"<{count + 1}Q", count, *offsets), *parts])
