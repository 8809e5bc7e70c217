"""jupyter_server's default framing (no subprotocol): JSON text with a "channel" key.

A message with buffers travels as a binary frame instead: big-endian uint32 count n,
n uint32 offsets from the start of the frame, then the JSON text and the buffers.
The server adds "channel" last with `json.dumps` default separators, so text frames
end with `, "channel": "iopub"}`; that tail is spliced off instead of parsing.
"""

from __future__ import annotations

import itertools
import re
import struct
from typing import Any

import orjson

from proxy.wire.errors import FrameError
from proxy.wire.message import KernelMessage, dumps, loads_object

MAX_CHANNEL_CHARS = 32
# Channel names never contain quotes or backslashes, so the value needs no unescaping.
_CHANNEL_TAIL = re.compile(
    r'(?P<sep>,|\{)\s*"channel"\s*:\s*"(?P<channel>[^"\\\x00-\x1f]{1,'
    + str(MAX_CHANNEL_CHARS)
    + r'})"\s*\}\s*\Z'
)
_OBJECT_START = re.compile(r"\s*\{")
_TAIL_WINDOW = 96  # long enough for `, "channel": "<32 chars>"}` with generous whitespace
_PARTS = ("header", "parent_header", "metadata", "content")


def untag_channel(text: str) -> tuple[str, str]:
    """Split a server text frame into (channel, message text without the "channel" key).

    The fast path splices the trailing key and does not validate the rest of the text;
    any other layout is parsed, the key popped and the message re-serialised.
    """
    start = max(0, len(text) - _TAIL_WINDOW)
    match = _CHANNEL_TAIL.search(text, start)
    if match is not None:
        if match.group("sep") == ",":
            if _OBJECT_START.match(text):
                return match.group("channel"), text[: match.start()] + "}"
        elif not text[: match.start()].strip():
            return match.group("channel"), "{}"
    msg = loads_object(text, "server frame")
    channel = msg.pop("channel", None)
    if not isinstance(channel, str) or not channel:
        raise FrameError("server frame has no string 'channel'")
    return channel, dumps(msg).decode("utf-8")


def tag_channel(text: str, channel: str) -> str:
    """Add `"channel": <channel>` to a JSON object text by splicing before its final '}'.

    The caller has validated `text` as a JSON object.
    """
    body = text.rstrip()
    if not body.endswith("}"):
        raise FrameError("message text is not a JSON object")
    body = body[:-1].rstrip()
    name = orjson.dumps(channel).decode("utf-8")
    if body.endswith("{"):
        return f'{body}"channel": {name}}}'
    return f'{body}, "channel": {name}}}'


def _message_from_dict(msg: dict[str, Any], buffers: list[bytes]) -> KernelMessage:
    channel = msg.get("channel")
    if not isinstance(channel, str) or not channel:
        raise FrameError("message has no string 'channel'")
    for name in _PARTS:
        if not isinstance(msg.get(name), dict):
            raise FrameError(f"message '{name}' is not a JSON object")
    return KernelMessage(
        channel=channel,
        header=dumps(msg["header"]),
        parent_header=dumps(msg["parent_header"]),
        metadata=dumps(msg["metadata"]),
        content=dumps(msg["content"]),
        buffers=buffers,
    )


def _split_binary(frame: bytes) -> tuple[bytes, list[bytes]]:
    size = len(frame)
    if size < 4:
        raise FrameError("binary frame shorter than its part count", FrameError.PROTOCOL_ERROR)
    (count,) = struct.unpack_from("!I", frame, 0)
    table_end = 4 * (count + 1)
    if count < 1 or table_end > size:
        raise FrameError(
            f"binary frame: {count} offsets do not fit in {size} bytes", FrameError.PROTOCOL_ERROR
        )
    offsets = [*struct.unpack_from(f"!{count}I", frame, 4), size]
    if offsets[0] < table_end:
        raise FrameError(
            "binary frame: first part starts inside the offset table", FrameError.PROTOCOL_ERROR
        )
    for start, stop in itertools.pairwise(offsets):
        if stop < start:
            raise FrameError("binary frame: offsets decrease or overrun", FrameError.PROTOCOL_ERROR)
    parts = [frame[offsets[i] : offsets[i + 1]] for i in range(count)]
    return parts[0], parts[1:]


def decode_json_frame(data: str | bytes) -> KernelMessage:
    """Parse a default-framing frame (text, or binary with buffers) into a KernelMessage."""
    if isinstance(data, str):
        return _message_from_dict(loads_object(data, "server frame"), [])
    json_part, buffers = _split_binary(data)
    return _message_from_dict(loads_object(json_part, "binary frame JSON part"), buffers)


def encode_json_frame(msg: KernelMessage) -> str | bytes:
    """Serialise a KernelMessage for the default framing: text, or binary when it has buffers."""
    json_part = b"".join(
        (
            b'{"header":',
            msg.header,
            b',"parent_header":',
            msg.parent_header,
            b',"metadata":',
            msg.metadata,
            b',"content":',
            msg.content,
            b',"channel":',
            orjson.dumps(msg.channel),
            b"}",
        )
    )
    if not msg.buffers:
        try:
            return json_part.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("message parts are not UTF-8") from exc
    count = 1 + len(msg.buffers)
    offsets = [4 * (count + 1)]
    for part in (json_part, *msg.buffers[:-1]):
        offsets.append(offsets[-1] + len(part))
    return b"".join([struct.pack(f"!{count + 1}I", count, *offsets), json_part, *msg.buffers])
