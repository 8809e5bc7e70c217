"""Round trips of the JSON parts, the channel tag, the v1 frame and the binary JSON frame."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from proxy.wire import (
    FrameError,
    KernelMessage,
    client_message_to_kernel,
    decode_json_frame,
    decode_v1,
    encode_json_frame,
    encode_v1,
    legacy_text,
    parse_client_message,
    tag_channel,
    untag_channel,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
messages_without_channel = json_objects.filter(lambda obj: "channel" not in obj)
channels = st.text(min_size=1, max_size=40)
v1_channels = st.text(min_size=1, max_size=32).filter(lambda c: len(c.encode("utf-8")) <= 32)
part_bytes = st.dictionaries(st.text(max_size=6), json_scalars, max_size=3).map(orjson.dumps)
buffers = st.lists(st.binary(max_size=64), max_size=4)


@given(obj=messages_without_channel, channel=channels, trailing=st.sampled_from(["", " ", "\n"]))
def test_tag_then_untag_round_trips(obj: dict[str, Any], channel: str, trailing: str) -> None:
    for text in (json.dumps(obj), orjson.dumps(obj).decode(), json.dumps(obj, indent=1)):
        tagged = tag_channel(text + trailing, channel)
        assert json.loads(tagged) == {**obj, "channel": channel}
        untagged_channel, untagged = untag_channel(tagged)
        assert untagged_channel == channel
        assert json.loads(untagged) == obj


@given(obj=messages_without_channel, channel=channels)
def test_untag_reads_what_jupyter_server_writes(obj: dict[str, Any], channel: str) -> None:
    # jupyter_server adds "channel" last and json.dumps the message with default separators.
    untagged_channel, untagged = untag_channel(json.dumps({**obj, "channel": channel}))
    assert (untagged_channel, json.loads(untagged)) == (channel, obj)
    compact = json.dumps({**obj, "channel": channel}, separators=(",", ":"))
    untagged_channel, untagged = untag_channel(compact)
    assert (untagged_channel, json.loads(untagged)) == (channel, obj)


@given(obj=messages_without_channel, channel=channels)
def test_untag_falls_back_to_parsing_when_channel_is_not_last(
    obj: dict[str, Any], channel: str
) -> None:
    untagged_channel, untagged = untag_channel(json.dumps({"channel": channel, **obj}))
    assert (untagged_channel, json.loads(untagged)) == (channel, obj)


def test_untag_splices_the_common_case_without_reserialising() -> None:
    text = '{"header": {"msg_type": "status"}, "content": {"a": 1.50}, "channel": "iopub"}'
    assert untag_channel(text) == ("iopub", text[: text.index(', "channel"')] + "}")
    assert untag_channel('{"channel": "shell"}') == ("shell", "{}")


@pytest.mark.parametrize("text", ['{"a": 1}', '{"channel": 3}', "[]", "not json", ""])
def test_untag_without_a_string_channel_raises(text: str) -> None:
    with pytest.raises(FrameError) as caught:
        untag_channel(text)
    assert caught.value.close_code == 1007


def test_tag_handles_the_empty_object() -> None:
    assert tag_channel("{}", "shell") == '{"channel": "shell"}'
    assert tag_channel(" { } \n", "shell") == ' {"channel": "shell"}'


@given(channel=v1_channels, header=st.binary(max_size=40), parent=st.binary(max_size=40),
       metadata=st.binary(max_size=40), content=st.binary(max_size=80), bufs=buffers)  # fmt: skip
def test_v1_round_trips_and_matches_jupyter_server(
    channel: str,
    header: bytes,
    parent: bytes,
    metadata: bytes,
    content: bytes,
    bufs: list[bytes],
) -> None:
    msg = KernelMessage(channel, header, parent, metadata, content, bufs)
    frame = encode_v1(msg)
    assert decode_v1(frame) == msg
    assert frame == serialize_msg_to_ws_v1([header, parent, metadata, content, *bufs], channel)
    assert deserialize_msg_from_ws_v1(frame) == (
        channel,
        [header, parent, metadata, content, *bufs],
    )


@settings(max_examples=60)
@given(channel=v1_channels, parts=st.lists(part_bytes, min_size=4, max_size=4), bufs=buffers)
def test_binary_json_frame_round_trips_and_matches_jupyter_server(
    channel: str, parts: list[bytes], bufs: list[bytes]
) -> None:
    msg = KernelMessage(channel, *parts, buffers=bufs)
    frame = encode_json_frame(msg)
    assert isinstance(frame, bytes if bufs else str)
    assert decode_json_frame(frame) == msg
    if bufs:
        theirs = deserialize_binary_message(frame)
        assert theirs["channel"] == channel
        assert [bytes(b) for b in theirs["buffers"]] == bufs
        as_dict = {name: orjson.loads(part) for name, part in zip(
            ("header", "parent_header", "metadata", "content"), parts, strict=True)}  # fmt: skip
        server_frame = serialize_binary_message({**as_dict, "channel": channel, "buffers": bufs})
        assert decode_json_frame(server_frame) == msg
    else:
        assert json.loads(frame)["channel"] == channel


@settings(max_examples=60)
@given(parts=st.lists(part_bytes, min_size=4, max_size=4), msg_id=st.none() | st.text(max_size=10),
       msg_type=st.none() | st.text(max_size=10))  # fmt: skip
def test_legacy_text_is_the_expected_json(
    parts: list[bytes], msg_id: str | None, msg_type: str | None
) -> None:
    msg = KernelMessage("iopub", *parts)
    expected: dict[str, Any] = {"header": orjson.loads(parts[0])}
    if msg_id is not None:
        expected["msg_id"] = msg_id
    if msg_type is not None:
        expected["msg_type"] = msg_type
    expected["parent_header"] = orjson.loads(parts[1])
    expected["metadata"] = orjson.loads(parts[2])
    expected["content"] = orjson.loads(parts[3])
    text = legacy_text(msg, msg_id=msg_id, msg_type=msg_type)
    assert json.loads(text) == expected
    replaced = legacy_text(
        msg, header=b"{}", content=b"[1]", parent_header=b"null", msg_id=msg_id, msg_type=msg_type
    )
    expected.update(header={}, content=[1], parent_header=None)
    assert json.loads(replaced) == expected


def test_parse_client_message_fills_missing_parts_and_keeps_the_rest() -> None:
    msg = parse_client_message('{"header": {"msg_id": "1", "msg_type": "kernel_info_request"}}')
    assert msg == {
        "header": {"msg_id": "1", "msg_type": "kernel_info_request"},
        "parent_header": {},
        "metadata": {},
        "content": {},
    }


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        "[]",
        '{"header": []}',
        '{"header": {"msg_type": "x"}}',
        '{"header": {"msg_id": "1"}}',
        '{"header": {"msg_id": 1, "msg_type": "x"}}',
        '{"header": {"msg_id": "1", "msg_type": "x"}, "content": []}',
        '{"header": {"msg_id": "1", "msg_type": "x"}, "metadata": "m"}',
        b'{"header": {"msg_id": "\xff", "msg_type": "x"}}',
        '{"header": {"msg_id": "\ud800", "msg_type": "x"}}',
        "[" * 5000 + "]" * 5000,
    ],
)
def test_parse_client_message_rejects_wrong_shapes(frame: str | bytes) -> None:
    with pytest.raises(FrameError) as caught:
        parse_client_message(frame)
    assert caught.value.close_code == 1007


def test_client_message_to_kernel_serialises_dates_and_drops_transport_keys() -> None:
    when = datetime(2014, 6, 1, 12, 30, tzinfo=UTC)
    msg = {
        "header": {"msg_id": "1", "msg_type": "execute_request", "date": when},
        "parent_header": {},
        "metadata": {},
        "content": {"code": "1"},
        "channel": "shell",
        "buffers": [b"x"],
    }
    kernel_msg = client_message_to_kernel(msg, "shell")
    assert orjson.loads(kernel_msg.header)["date"] == "2014-06-01T12:30:00Z"
    assert kernel_msg.buffers == []
    assert b"channel" not in kernel_msg.content + kernel_msg.header
