"""Garbage into every decoder raises only WireError subclasses, never anything else."""

from __future__ import annotations

import struct

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.wire import (
    KernelMessage,
    SpecAdapter,
    WireError,
    decode_json_frame,
    decode_v1,
    encode_json_frame,
    encode_v1,
    parse_client_message,
    parse_handshake,
    untag_channel,
)
from proxy.wire.errors import MAX_REASON_BYTES

V5_TYPES = [
    "status", "stream", "display_data", "update_display_data", "execute_input",
    "execute_result", "error", "clear_output", "comm_open", "comm_msg", "comm_close",
    "kernel_info_reply", "execute_reply", "complete_reply", "inspect_reply", "input_request",
    "shutdown_reply", "history_reply", "comm_info_reply",
]  # fmt: skip
V4_TYPES = [
    "execute_request", "object_info_request", "complete_request", "kernel_info_request",
    "input_reply", "comm_open", "comm_msg", "comm_close", "shutdown_request", "history_request",
    "kernel_info_reply", "complete_reply", "inspect_reply", "stream", "display_data",
    "input_request",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
json_bytes = json_values.map(orjson.dumps)
content_keys = st.sampled_from(
    ["text", "data", "name", "found", "matches", "cursor_start", "cursor_end", "language_info",
     "protocol_version", "implementation", "implementation_version", "payload", "status",
     "user_expressions", "user_variables", "password", "application/json", "text/plain",
     "oname", "detail_level", "line", "cursor_pos", "code", "language", "source", "start"]
)  # fmt: skip
shaped_contents = st.dictionaries(content_keys, json_values, max_size=5)


def _check_reason(exc: WireError) -> None:
    assert len(exc.reason.encode("utf-8")) <= MAX_REASON_BYTES
    assert exc.close_code in (1002, 1003, 1007)


def _only_wire_errors(decode, data) -> None:  # type: ignore[no-untyped-def]
    try:
        decode(data)
    except WireError as exc:
        _check_reason(exc)


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_input_into_every_decoder(data: bytes | str) -> None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    text = data if isinstance(data, str) else data.decode("latin-1")
    _only_wire_errors(parse_handshake, text)
    _only_wire_errors(parse_client_message, data)
    _only_wire_errors(decode_v1, raw)
    _only_wire_errors(decode_json_frame, data)
    _only_wire_errors(decode_json_frame, raw)
    _only_wire_errors(untag_channel, text)


@st.composite
def v1_frames(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.binary(max_size=20), min_size=5, max_size=8))
    channel = draw(st.sampled_from(["shell", "iopub", "x" * 33, ""]))
    return encode_v1(KernelMessage(channel, *parts[:4], buffers=parts[4:]))


@st.composite
def corrupted(draw: st.DrawFn, frames: st.SearchStrategy[bytes], word: int) -> bytes:
    """A valid frame truncated, extended, or with one count/offset word overwritten."""
    frame = draw(frames)
    how = draw(st.sampled_from(["truncate", "extend", "overwrite", "invalid_utf8"]))
    if how == "truncate":
        return frame[: draw(st.integers(0, max(0, len(frame) - 1)))]
    if how == "extend":
        return frame + draw(st.binary(min_size=1, max_size=8))
    if how == "invalid_utf8":
        return frame.replace(b"shell", b"sh\xffll").replace(b"iopub", b"\xc3(pub")
    slots = max(1, min(len(frame) // word, 12))
    slot = draw(st.integers(0, slots - 1))
    fmt = "<Q" if word == 8 else "!I"
    value = draw(st.integers(0, 2 ** (8 * word) - 1) | st.sampled_from([0, 1, 2 ** (8 * word - 1)]))
    patched = bytearray(frame)
    struct.pack_into(fmt, patched, slot * word, value)
    return bytes(patched)


@st.composite
def json_binary_frames(draw: st.DrawFn) -> bytes:
    parts = [orjson.dumps(draw(st.dictionaries(st.text(max_size=4), json_scalars, max_size=2)))
             for _ in range(4)]  # fmt: skip
    bufs = draw(st.lists(st.binary(max_size=16), min_size=1, max_size=3))
    frame = encode_json_frame(KernelMessage("iopub", *parts, buffers=bufs))
    assert isinstance(frame, bytes)
    return frame


@settings(max_examples=300)
@given(corrupted(v1_frames(), 8))
def test_corrupted_v1_frames(frame: bytes) -> None:
    _only_wire_errors(decode_v1, frame)


@settings(max_examples=300)
@given(corrupted(json_binary_frames(), 4))
def test_corrupted_binary_json_frames(frame: bytes) -> None:
    _only_wire_errors(decode_json_frame, frame)


def test_huge_offset_counts_are_rejected_before_allocating() -> None:
    for frame in (struct.pack("<Q", 2**64 - 1) + b"\0" * 64, struct.pack("<QQ", 2**40, 16)):
        _only_wire_errors(decode_v1, frame)
    _only_wire_errors(decode_json_frame, struct.pack("!II", 2**32 - 1, 8) + b"{}")


@settings(max_examples=300)
@given(
    mode=st.sampled_from(["auto", "4", "5"]),
    msg_type=st.sampled_from(V5_TYPES) | st.text(max_size=8),
    header_extra=st.dictionaries(st.sampled_from(["msg_id", "version", "date"]), json_values),
    parent=json_bytes | st.binary(max_size=30),
    content=shaped_contents.map(orjson.dumps) | json_bytes | st.binary(max_size=30),
    header_garbage=st.booleans(),
    bufs=st.lists(st.binary(max_size=4), max_size=2),
)
def test_adapter_to_client_on_garbage(
    mode: str,
    msg_type: str,
    header_extra: dict[str, object],
    parent: bytes,
    content: bytes,
    header_garbage: bool,
    bufs: list[bytes],
) -> None:
    adapter = SpecAdapter(mode)
    header = b"\xff{" if header_garbage else orjson.dumps({**header_extra, "msg_type": msg_type})
    msg = KernelMessage("iopub", header, parent, b"{}", content, bufs)
    _only_wire_errors(adapter.to_client, msg)
    assert adapter.dropped_buffers in (0, len(bufs))


@settings(max_examples=300)
@given(
    mode=st.sampled_from(["auto", "4", "5"]),
    msg_type=st.sampled_from(V4_TYPES) | json_values,
    msg_id=st.text(max_size=4) | json_values,
    content=shaped_contents | json_values,
    parent=st.dictionaries(st.sampled_from(["msg_id", "msg_type", "version"]), json_values),
    version=st.none() | st.sampled_from(["4.1", "5.0", "5.3"]),
)
def test_adapter_from_client_on_garbage(
    mode: str,
    msg_type: object,
    msg_id: object,
    content: object,
    parent: dict[str, object],
    version: str | None,
) -> None:
    header: dict[str, object] = {"msg_type": msg_type, "msg_id": msg_id}
    if version is not None:
        header["version"] = version
    msg = {"header": header, "parent_header": parent, "metadata": {}, "content": content}
    _only_wire_errors(SpecAdapter(mode).from_client, msg)
