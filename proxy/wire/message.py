"""Kernel messages as four raw JSON parts, and the legacy (msg spec v4 era) JSON text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.wire.errors import FrameError

_DUMP_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_OPTIONAL_PARTS = ("parent_header", "metadata", "content")


@dataclass(slots=True)
class KernelMessage:
    """One kernel message; the JSON parts stay unparsed bytes so they can pass through untouched."""

    channel: str
    header: bytes
    parent_header: bytes
    metadata: bytes
    content: bytes
    buffers: list[bytes] = field(default_factory=list)


def dumps(value: Any) -> bytes:
    """Serialise one JSON part the way the kernel's Session does (orjson, dates in UTC with Z)."""
    try:
        return orjson.dumps(value, option=_DUMP_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise FrameError(f"message part is not JSON-serialisable: {exc}") from exc


def loads_object(data: str | bytes | bytearray | memoryview, what: str) -> dict[str, Any]:
    """Parse JSON that must be an object; FrameError(1007) otherwise."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FrameError(f"{what} is not a JSON object")
    return value


def parse_client_message(text: str | bytes) -> dict[str, Any]:
    """Parse a legacy client frame into a message dict with all four parts present."""
    msg = loads_object(text, "client message")
    header = msg.get("header")
    if not isinstance(header, dict):
        raise FrameError("client message has no 'header' object")
    if not isinstance(header.get("msg_type"), str):
        raise FrameError("client message header has no string 'msg_type'")
    if not isinstance(header.get("msg_id"), str):
        raise FrameError("client message header has no string 'msg_id'")
    for name in _OPTIONAL_PARTS:
        part = msg.get(name)
        if part is None:
            msg[name] = {}
        elif not isinstance(part, dict):
            raise FrameError(f"client message '{name}' is not a JSON object")
    return msg


def client_message_to_kernel(msg: dict[str, Any], channel: str) -> KernelMessage:
    """Serialise a parsed client message into parts, dropping its 'channel' and 'buffers'."""
    return KernelMessage(
        channel=channel,
        header=dumps(msg.get("header") or {}),
        parent_header=dumps(msg.get("parent_header") or {}),
        metadata=dumps(msg.get("metadata") or {}),
        content=dumps(msg.get("content") or {}),
        buffers=[],
    )


def legacy_text(
    msg: KernelMessage,
    header: bytes | None = None,
    content: bytes | Sequence[bytes | memoryview] | None = None,
    parent_header: bytes | None = None,
    msg_id: str | None = None,
    msg_type: str | None = None,
) -> bytes:
    """Assemble the JSON text a legacy client receives, by concatenating the raw parts.

    The shape is the old notebook server's: header, msg_id, msg_type, parent_header,
    metadata, content (msg_id/msg_type only when given). The result is valid JSON
    whenever the parts are; nothing is parsed here. `content` may be given as pieces to
    concatenate, which saves copying large spliced content twice.
    """
    pieces: list[bytes | memoryview] = [b'{"header":', msg.header if header is None else header]
    if msg_id is not None:
        pieces += (b',"msg_id":', orjson.dumps(msg_id))
    if msg_type is not None:
        pieces += (b',"msg_type":', orjson.dumps(msg_type))
    pieces += (
        b',"parent_header":',
        msg.parent_header if parent_header is None else parent_header,
        b',"metadata":',
        msg.metadata,
        b',"content":',
    )
    if content is None:
        pieces.append(msg.content)
    elif isinstance(content, bytes):
        pieces.append(content)
    else:
        pieces.extend(content)
    pieces.append(b"}")
    return b"".join(pieces)
