"""SpecAdapter: each fix over jupyter_client.adapter, the modes, and what is left unparsed."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from proxy.wire import FrameError, KernelMessage, SpecAdapter, parse_client_message
from proxy.wire.adapt import parse_inspector_text, strip_ansi

# Real ipykernel 7.4 / IPython 8.12 inspect_reply text for `def f(a, b=1): 'Doc of f.'`.
F_INSPECT_TEXT = (
    "\x1b[0;31mSignature:\x1b[0m \x1b[0mf\x1b[0m\x1b[0;34m(\x1b[0m\x1b[0ma\x1b[0m\x1b[0;34m,"
    "\x1b[0m \x1b[0mb\x1b[0m\x1b[0;34m=\x1b[0m\x1b[0;36m1\x1b[0m\x1b[0;34m)\x1b[0m\x1b[0;34m"
    "\x1b[0m\x1b[0;34m\x1b[0m\x1b[0m\n\x1b[0;31mDocstring:\x1b[0m Doc of f.\n"
    "\x1b[0;31mFile:\x1b[0m      /tmp/ipykernel_7881/4057125128.py\n"
    "\x1b[0;31mType:\x1b[0m      function"
)
SYS_INSPECT_TEXT = (
    "\x1b[0;31mType:\x1b[0m        module\n"
    "\x1b[0;31mString form:\x1b[0m <module 'sys' (built-in)>\n"
    "\x1b[0;31mDocstring:\x1b[0m  \nThis module provides access.\n\nDynamic objects:\n\nargv -- x"
)


def client_msg(msg_type: str, content: dict[str, Any], msg_id: str = "REQ1") -> dict[str, Any]:
    """A request the way kernel.js 2.x sends it, parsed as the session parses it."""
    text = json.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "username": "username",
                "session": "S",
                "msg_type": msg_type,
            },
            "metadata": {},
            "content": content,
            "parent_header": {},
        }
    )
    return parse_client_message(text)


def kernel_msg(
    msg_type: str,
    content: bytes | dict[str, Any],
    parent_id: str = "REQ1",
    parent_type: str = "execute_request",
    buffers: list[bytes] | None = None,
) -> KernelMessage:
    """A kernel message with orjson-packed parts, as ipykernel sends them."""
    header = {"msg_id": "K1", "msg_type": msg_type, "session": "K", "version": "5.4"}
    parent = {"msg_id": parent_id, "msg_type": parent_type, "version": "5.0"}
    raw = content if isinstance(content, bytes) else orjson.dumps(content)
    return KernelMessage(
        "shell", orjson.dumps(header), orjson.dumps(parent), b"{}", raw, buffers or []
    )


def to_client(adapter: SpecAdapter, msg: KernelMessage) -> dict[str, Any]:
    return json.loads(adapter.to_client(msg))


# client -> kernel


def test_from_client_header_is_plain_json_with_a_v5_version() -> None:
    v5 = SpecAdapter("4").from_client(client_msg("kernel_info_request", {}))
    assert isinstance(v5["header"]["date"], str)
    assert v5["header"]["date"].endswith("Z")
    assert v5["header"]["version"].startswith("5.")
    json.dumps(v5)


def test_object_info_request_without_detail_level() -> None:
    v5 = SpecAdapter("4").from_client(client_msg("object_info_request", {"oname": "len"}))
    assert v5["header"]["msg_type"] == "inspect_request"
    assert v5["content"] == {"code": "len", "cursor_pos": 3, "detail_level": 0}


def test_complete_request_cursor_is_converted_from_utf16_to_code_points() -> None:
    line = "s = '\U0001f600'; sys.std"
    request = client_msg(
        "complete_request", {"text": "", "line": line, "block": None, "cursor_pos": 17}
    )
    v5 = SpecAdapter("4").from_client(request)
    assert v5["content"] == {"code": line, "cursor_pos": 16}


def test_execute_request_user_variables_become_user_expressions() -> None:
    content = {"code": "x=1", "silent": False, "user_variables": ["x"], "user_expressions": {}}
    v5 = SpecAdapter("4").from_client(client_msg("execute_request", content))
    assert v5["content"]["user_expressions"] == {"x": "x"}
    assert "user_variables" not in v5["content"]


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("object_info_request", {}),
        ("object_info_request", {"oname": 3}),
        ("complete_request", {"line": "x"}),
        ("complete_request", {"line": "x", "cursor_pos": "1"}),
        ("execute_request", {"code": "", "user_variables": "x"}),
    ],
)
def test_from_client_rejects_requests_it_cannot_adapt(msg_type: str, content: dict) -> None:
    with pytest.raises(FrameError) as caught:
        SpecAdapter("4").from_client(client_msg(msg_type, content))
    assert caught.value.close_code == 1007


# kernel -> client: the fixes


def test_inspect_reply_becomes_a_useful_object_info_reply() -> None:
    adapter = SpecAdapter("4")
    adapter.from_client(client_msg("object_info_request", {"oname": "f", "detail_level": 0}))
    content = {
        "status": "ok",
        "data": {"text/plain": F_INSPECT_TEXT},
        "metadata": {},
        "found": True,
    }
    reply = to_client(adapter, kernel_msg("inspect_reply", content, parent_type="inspect_request"))
    assert reply["msg_type"] == reply["header"]["msg_type"] == "object_info_reply"
    assert reply["parent_header"]["msg_type"] == "object_info_request"
    info = reply["content"]
    assert info["found"] is True
    assert info["name"] == "f"
    assert info["definition"] == "f(a, b=1)"
    assert info["docstring"] == "Doc of f."
    assert info["type_name"] == "function"
    assert info["file"] == "/tmp/ipykernel_7881/4057125128.py"
    assert info["call_def"] is None and info["init_definition"] is None


def test_inspector_text_with_multiline_sections() -> None:
    fields = parse_inspector_text(SYS_INSPECT_TEXT)
    assert fields == {
        "type_name": "module",
        "string_form": "<module 'sys' (built-in)>",
        "docstring": "This module provides access.\n\nDynamic objects:\n\nargv -- x",
    }


def test_inspect_reply_not_found() -> None:
    adapter = SpecAdapter("4")
    adapter.from_client(client_msg("object_info_request", {"oname": "nope"}))
    content = {"status": "ok", "data": {}, "metadata": {}, "found": False}
    info = to_client(adapter, kernel_msg("inspect_reply", content))["content"]
    assert info["found"] is False
    assert info["name"] == "nope"


def test_inspect_reply_from_a_non_ipython_kernel_shows_its_text_as_docstring() -> None:
    content = {"status": "ok", "data": {"text/plain": "\x1b[1mplain help\x1b[0m"}, "found": True}
    info = to_client(SpecAdapter("4"), kernel_msg("inspect_reply", content))["content"]
    assert info["docstring"] == "plain help"


def test_strip_ansi_handles_csi_and_osc() -> None:
    assert strip_ansi("\x1b[38;5;241mx\x1b[39;49m\x1b]8;;http://a\x07y\x1b]8;;\x07") == "xy"


@pytest.mark.parametrize(
    ("line", "cursor_pos", "reply", "expected"),
    [
        ("import o", 8, {"matches": ["os"], "cursor_start": 7, "cursor_end": 8}, "o"),
        ("zzz", 3, {"matches": [], "cursor_start": 3, "cursor_end": 3}, ""),
        ("x = sys.std", 11, {"matches": ["stdout"], "cursor_start": 8, "cursor_end": 11}, "std"),
        # The kernel may match case-insensitively: the typed text is what gets replaced.
        ("Sys.STD", 7, {"matches": ["stdout"], "cursor_start": 4, "cursor_end": 7}, "STD"),
    ],
)
def test_complete_reply_matched_text_comes_from_the_request(
    line: str, cursor_pos: int, reply: dict[str, Any], expected: str
) -> None:
    adapter = SpecAdapter("4")
    adapter.from_client(client_msg("complete_request", {"line": line, "cursor_pos": cursor_pos}))
    content = {**reply, "metadata": {"_jupyter_types_experimental": []}, "status": "ok"}
    out = to_client(adapter, kernel_msg("complete_reply", content))["content"]
    assert out == {"matches": reply["matches"], "matched_text": expected, "status": "ok"}


def test_complete_reply_without_a_remembered_request_or_matches() -> None:
    adapter = SpecAdapter("4")
    content = {"matches": [], "cursor_start": 2, "cursor_end": 4, "metadata": {}, "status": "ok"}
    out = to_client(adapter, kernel_msg("complete_reply", content, parent_id="unknown"))
    assert out["content"] == {"matches": [], "matched_text": "", "status": "ok"}
    content["matches"] = ["abcdef"]
    out = to_client(adapter, kernel_msg("complete_reply", content, parent_id="unknown"))
    assert out["content"]["matched_text"] == "ab"


def test_kernel_info_reply_speaks_protocol_4_1() -> None:
    content = {
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "ipython",
        "implementation_version": "8.12.3",
        "language_info": {"name": "python", "version": "3.11.7"},
        "banner": "Python",
    }
    out = to_client(SpecAdapter("4"), kernel_msg("kernel_info_reply", content))["content"]
    assert out == {
        "protocol_version": [4, 1],
        "ipython_version": [8, 12, 3],
        "language_version": [3, 11, 7],
        "language": "python",
    }


def test_execute_reply_page_payload_and_user_variables() -> None:
    adapter = SpecAdapter("4")
    request = {"code": "f?", "user_variables": ["x"], "user_expressions": {"y": "1"}}
    adapter.from_client(client_msg("execute_request", request))
    x_value = {"status": "ok", "data": {"text/plain": "1"}, "metadata": {}}
    content = {
        "status": "ok",
        "execution_count": 2,
        "user_expressions": {"x": x_value, "y": x_value},
        "payload": [{"source": "page", "data": {"text/plain": "Doc"}, "start": 3}],
    }
    out = to_client(adapter, kernel_msg("execute_reply", content))["content"]
    assert out["user_variables"] == {"x": x_value}
    assert out["user_expressions"] == {"y": x_value}
    assert out["payload"] == [
        {"source": "page", "text": "Doc", "html": None, "start_line_number": 3}
    ]


def test_error_execute_reply_still_has_user_variables() -> None:
    content = {"status": "error", "ename": "E", "evalue": "", "traceback": [], "execution_count": 1}
    out = to_client(SpecAdapter("4"), kernel_msg("execute_reply", content))["content"]
    assert out["user_variables"] == {} and out["user_expressions"] == {}
    assert out["ename"] == "E"


def test_execute_result_application_json_becomes_a_string() -> None:
    content = {"data": {"application/json": {"a": [1]}, "text/plain": "x"}, "execution_count": 1}
    out = to_client(SpecAdapter("4"), kernel_msg("execute_result", content))
    assert out["msg_type"] == "pyout"
    assert json.loads(out["content"]["data"]["application/json"]) == {"a": [1]}


def test_display_data_application_json_becomes_a_string_and_gets_a_source() -> None:
    content = {"data": {"application/json": {"a": 1}}, "metadata": {}, "transient": {}}
    out = to_client(SpecAdapter("4"), kernel_msg("display_data", content))["content"]
    assert out["source"] == "display"
    assert json.loads(out["data"]["application/json"]) == {"a": 1}


def test_clear_output_gets_the_ipython_1_flags() -> None:
    out = to_client(SpecAdapter("4"), kernel_msg("clear_output", b'{"wait":false}'))
    assert out["content"] == {"wait": False, "stdout": True, "stderr": True, "other": True}


def test_input_request_drops_password() -> None:
    content = {"prompt": "Password: ", "password": True}
    out = to_client(SpecAdapter("4"), kernel_msg("input_request", content))
    assert out["content"] == {"prompt": "Password: "}


# kernel -> client: splicing instead of parsing


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name":"stdout","text":"hi\\n"}',
        b'{"name": "stderr", "text": "hi\\n"}',
        b'{"text":"hi\\n","name":"stdout"}',
    ],
)
def test_stream_text_becomes_data(raw: bytes) -> None:
    out = to_client(SpecAdapter("4"), kernel_msg("stream", raw))["content"]
    assert out["data"] == "hi\n"
    assert "text" not in out


def test_stream_is_spliced_without_reparsing() -> None:
    raw = b'{"name":"stdout","text":"1.50\\u00e9"}'  # a re-dump would change the escapes
    assert b'"content":{"name":"stdout","data":"1.50\\u00e9"}' in SpecAdapter("4").to_client(
        kernel_msg("stream", raw)
    )


@pytest.mark.parametrize("raw", [b"{}", b'{"data":{"text/plain":"x"},"metadata":{}}', b" { } "])
def test_display_data_source_is_spliced(raw: bytes) -> None:
    out = to_client(SpecAdapter("4"), kernel_msg("display_data", raw))["content"]
    assert out == {**json.loads(raw), "source": "display"}


@pytest.mark.parametrize(
    "msg_type",
    ["status", "execute_input", "error", "comm_open", "comm_msg", "comm_close", "shutdown_reply",
     "update_display_data", "history_reply", "comm_info_reply", "execute_result"],
)  # fmt: skip
def test_content_of_unchanged_types_is_never_parsed(msg_type: str) -> None:
    raw = b'{"not": json at all'
    text = SpecAdapter("4").to_client(kernel_msg(msg_type, raw))
    assert text.endswith(b',"content":' + raw + b"}")


def test_renames_types_and_removes_versions() -> None:
    for v5, v4 in [("execute_result", "pyout"), ("execute_input", "pyin"), ("error", "pyerr")]:
        out = to_client(SpecAdapter("4"), kernel_msg(v5, {}))
        assert out["msg_type"] == out["header"]["msg_type"] == v4
        assert "version" not in out["header"] and "version" not in out["parent_header"]
        assert out["msg_id"] == "K1"


# modes, memory, buffers


def test_auto_mode_adapts_until_a_v5_client_speaks() -> None:
    adapter = SpecAdapter("auto")
    assert adapter.adapting
    adapter.from_client(client_msg("kernel_info_request", {}))
    assert adapter.adapting
    v5_request = client_msg("kernel_info_request", {})
    v5_request["header"]["version"] = "5.3"
    assert adapter.from_client(v5_request) is v5_request
    assert v5_request["header"]["version"] == "5.3"
    assert not adapter.adapting
    adapter.from_client(client_msg("kernel_info_request", {}))
    assert not adapter.adapting
    out = to_client(adapter, kernel_msg("stream", {"name": "stdout", "text": "x"}))
    assert out["msg_type"] == "stream"
    assert out["content"] == {"name": "stdout", "text": "x"}
    assert out["header"]["version"] == "5.4"


def test_fixed_modes() -> None:
    never = SpecAdapter("5")
    request = client_msg("object_info_request", {"oname": "x", "detail_level": 0})
    assert never.from_client(request)["header"]["msg_type"] == "object_info_request"
    assert to_client(never, kernel_msg("execute_result", {}))["msg_type"] == "execute_result"
    always = SpecAdapter("4")
    v5_request = client_msg("kernel_info_request", {})
    v5_request["header"]["version"] = "5.0"
    always.from_client(v5_request)
    assert always.adapting
    with pytest.raises(ValueError, match="adapter mode"):
        SpecAdapter("6")


def test_remembered_requests_are_bounded_oldest_first() -> None:
    adapter = SpecAdapter("4", remembered_requests=3)
    for n in range(5):
        adapter.from_client(client_msg("object_info_request", {"oname": f"n{n}"}, msg_id=f"R{n}"))
    found = {"status": "ok", "data": {"text/plain": "Type: int"}, "found": True}
    names = [
        to_client(adapter, kernel_msg("inspect_reply", found, parent_id=f"R{n}"))["content"]["name"]
        for n in range(5)
    ]
    assert names == ["", "", "n2", "n3", "n4"]


def test_buffers_are_dropped_and_counted() -> None:
    for mode in ("4", "5"):
        adapter = SpecAdapter(mode)
        msg = kernel_msg("comm_msg", {"comm_id": "c", "data": {}}, buffers=[b"\x00\x01", b"xyz"])
        out = to_client(adapter, msg)
        assert out["content"] == {"comm_id": "c", "data": {}}
        assert "buffers" not in out
        assert adapter.dropped_buffers == 2


def test_malformed_header_raises_frame_error() -> None:
    msg = kernel_msg("status", {})
    msg.header = b'{"msg_id": "x"}'
    with pytest.raises(FrameError):
        SpecAdapter("4").to_client(msg)
