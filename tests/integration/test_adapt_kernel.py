"""SpecAdapter against a real ipykernel: kernel.js 2.x requests in, v4 messages out.

Requests are built exactly as IPython 2.x's kernel.js/comm.js build them, pass through
parse_client_message -> SpecAdapter.from_client -> client_message_to_kernel and go to the
kernel with Session.send_raw, as jupyter_server does for v1 frames. What the kernel sends
back is framed with jupyter_server's own v1 serializer, decoded with decode_v1, turned
into legacy text by SpecAdapter.to_client and checked against what kernel.js 2.x reads.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import zmq
from jupyter_client.manager import KernelManager
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

from proxy.wire import (
    SpecAdapter,
    client_message_to_kernel,
    decode_v1,
    parse_client_message,
)

WAIT_SECONDS = 20.0
MAX_MESSAGES = 200
V4_IOPUB_TYPES = {"status", "stream", "display_data", "pyout", "pyerr", "pyin", "clear_output"}

KERNEL_SETUP = '''
import comm

def f(a, b=1):
    """Doc of f."""

class Widget:
    """A widget."""
    def __init__(self, size):
        """Make a widget of a size."""

def _echo_target(c, open_msg):
    c.send({"opened": open_msg["content"]["data"]})
    c.on_msg(lambda msg: c.send({"echo": msg["content"]["data"]}))

comm.get_comm_manager().register_target("echo", _echo_target)
'''


def kernel_js_uuid() -> str:
    """IPython 2.x utils.uuid(): 32 uppercase hex digits."""
    digits = [random.choice("0123456789ABCDEF") for _ in range(32)]
    digits[12] = "4"
    digits[16] = random.choice("89AB")
    return "".join(digits)


class LegacyFrontend:
    """Plays an IPython 2.x kernel.js against a kernel, through the wire layer only."""

    def __init__(self, km: KernelManager) -> None:
        self.session = km.session
        self.session_id = kernel_js_uuid()
        self.adapter = SpecAdapter("auto")
        identity = self.session_id.encode()
        # stdin input_request is routed to the identity of the shell socket that asked.
        self.sockets = {
            "shell": km.connect_shell(identity=identity),
            "iopub": km.connect_iopub(),
            "stdin": km.connect_stdin(identity=identity),
        }

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)

    # kernel.js Kernel.prototype._get_msg / send_shell_message
    def send(self, channel: str, msg_type: str, content: dict[str, Any], **metadata: Any) -> str:
        msg = {
            "header": {
                "msg_id": kernel_js_uuid(),
                "username": "username",
                "session": self.session_id,
                "msg_type": msg_type,
            },
            "metadata": metadata,
            "content": content,
            "parent_header": {},
        }
        v5 = self.adapter.from_client(parse_client_message(json.dumps(msg)))
        kernel_msg = client_message_to_kernel(v5, channel)
        parts = [kernel_msg.header, kernel_msg.parent_header, kernel_msg.metadata]
        self.session.send_raw(self.sockets[channel], [*parts, kernel_msg.content])
        return msg["header"]["msg_id"]

    def execute(self, code: str, **options: Any) -> str:
        # CodeCell.execute: kernel.execute(text, callbacks, {silent: false, store_history: true})
        content = {
            "code": code,
            "silent": True,
            "store_history": False,
            "user_variables": [],
            "user_expressions": {},
            "allow_stdin": True,
        }
        content.update(silent=False, store_history=True)
        content.update(options)
        return self.send("shell", "execute_request", content)

    def receive(self, channel: str, deadline: float) -> dict[str, Any]:
        """Next message on `channel` as the legacy client sees it."""
        sock = self.sockets[channel]
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not sock.poll(remaining_ms, zmq.POLLIN):
            raise TimeoutError(f"nothing on {channel} within {WAIT_SECONDS}s")
        _, msg_list = self.session.feed_identities(sock.recv_multipart())
        frame = serialize_msg_to_ws_v1(msg_list[1:], channel)  # what jupyter_server sends
        text = self.adapter.to_client(decode_v1(frame))
        return orjson.loads(text)

    def reply(self, msg_id: str, channel: str = "shell") -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_SECONDS
        for _ in range(MAX_MESSAGES):
            msg = self.receive(channel, deadline)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        raise AssertionError(f"no reply to {msg_id}")

    def outputs(self, msg_id: str) -> list[dict[str, Any]]:
        """IOPub messages for `msg_id` up to and including its idle status."""
        deadline = time.monotonic() + WAIT_SECONDS
        collected = []
        for _ in range(MAX_MESSAGES):
            msg = self.receive("iopub", deadline)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            collected.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return collected
        raise AssertionError(f"no idle status for {msg_id}")

    def run(self, code: str, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        msg_id = self.execute(code, **options)
        return self.reply(msg_id), self.outputs(msg_id)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelManager]:
    runtime = tmp_path_factory.mktemp("runtime")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
        env.setenv("JUPYTER_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        env.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        km = KernelManager(kernel_name="python3")
        km.start_kernel()
        try:
            client = km.client()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=60)
                client.execute_interactive(KERNEL_SETUP, timeout=WAIT_SECONDS)
            finally:
                client.stop_channels()
            yield km
        finally:
            km.shutdown_kernel(now=True)


@pytest.fixture
def frontend(kernel: KernelManager) -> Iterator[LegacyFrontend]:
    client = LegacyFrontend(kernel)
    # IOPub is a PUB socket: wait until our subscription is live before testing.
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        msg_id = client.send("shell", "kernel_info_request", {})
        try:
            client.receive("iopub", min(deadline, time.monotonic() + 0.5))
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    # The subscription is live now; one full round trip leaves no stray messages behind.
    msg_id = client.send("shell", "kernel_info_request", {})
    client.outputs(msg_id)
    client.reply(msg_id)
    yield client
    client.close()


def _by_type(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for msg in messages:
        grouped.setdefault(msg["msg_type"], []).append(msg)
    return grouped


def _assert_v4_envelope(msg: dict[str, Any]) -> None:
    assert "version" not in msg["header"]
    assert "version" not in msg["parent_header"]
    assert msg["msg_type"] == msg["header"]["msg_type"]
    assert msg["msg_id"] == msg["header"]["msg_id"]


def test_kernel_info_reply_has_v4_version_lists(frontend: LegacyFrontend) -> None:
    msg_id = frontend.send("shell", "kernel_info_request", {})
    reply = frontend.reply(msg_id)
    _assert_v4_envelope(reply)
    assert reply["msg_type"] == "kernel_info_reply"
    content = reply["content"]
    assert content["protocol_version"] == [4, 1]
    assert content["language"] == "python"
    assert all(isinstance(part, int) for part in content["language_version"])
    assert all(isinstance(part, int) for part in content["ipython_version"])
    statuses = frontend.outputs(msg_id)
    assert [m["content"]["execution_state"] for m in statuses] == ["busy", "idle"]
    assert statuses[0]["parent_header"]["msg_type"] == "kernel_info_request"


def test_execute_produces_v4_outputs(frontend: LegacyFrontend) -> None:
    code = (
        "import sys\n"
        "from IPython.display import display, HTML, clear_output\n"
        "print('to stdout')\n"
        "sys.stderr.write('to stderr\\n')\n"
        "display(HTML('<b>shown</b>'))\n"
        "clear_output(wait=True)\n"
        "6 * 7"
    )
    reply, outputs = frontend.run(code)
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["user_variables"] == {}
    assert reply["parent_header"]["msg_type"] == "execute_request"
    count = reply["content"]["execution_count"]

    for msg in outputs:
        _assert_v4_envelope(msg)
        assert msg["msg_type"] in V4_IOPUB_TYPES
    by_type = _by_type(outputs)
    assert by_type["pyin"][0]["content"] == {"code": code, "execution_count": count}
    streams = {m["content"]["name"]: m["content"] for m in by_type["stream"]}
    assert streams["stdout"]["data"] == "to stdout\n"
    assert streams["stderr"]["data"] == "to stderr\n"
    assert "text" not in streams["stdout"]
    display = by_type["display_data"][0]["content"]
    assert display["source"] == "display"
    assert display["data"]["text/html"] == "<b>shown</b>"
    clear = by_type["clear_output"][0]["content"]
    assert clear["wait"] is True
    assert clear["stdout"] and clear["stderr"] and clear["other"]
    pyout = by_type["pyout"][0]["content"]
    assert pyout["data"]["text/plain"] == "42"
    assert pyout["execution_count"] == count


def test_error_becomes_pyerr(frontend: LegacyFrontend) -> None:
    reply, outputs = frontend.run("1/0")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "ZeroDivisionError"
    assert "user_variables" in reply["content"]
    pyerr = _by_type(outputs)["pyerr"][0]["content"]
    assert pyerr["ename"] == "ZeroDivisionError"
    assert pyerr["traceback"]


def test_user_variables_come_back_as_user_variables(frontend: LegacyFrontend) -> None:
    reply, _ = frontend.run("answer = 42", user_variables=["answer"], user_expressions={"y": "1+1"})
    content = reply["content"]
    assert content["user_variables"]["answer"]["data"]["text/plain"] == "42"
    assert content["user_expressions"]["y"]["data"]["text/plain"] == "2"
    assert "answer" not in content["user_expressions"]


def test_json_display_data_is_a_string_as_in_v4(frontend: LegacyFrontend) -> None:
    _, outputs = frontend.run("from IPython.display import JSON, display\ndisplay(JSON({'a': 1}))")
    display = _by_type(outputs)["display_data"][0]["content"]
    assert json.loads(display["data"]["application/json"]) == {"a": 1}


def test_pager_payload_has_v4_text(frontend: LegacyFrontend) -> None:
    reply, _ = frontend.run("f?")
    (payload,) = reply["content"]["payload"]
    assert payload["source"] == "page"
    assert "Doc of f." in payload["text"]
    assert "start_line_number" in payload


def test_object_info_reply_fills_the_tooltip_fields(frontend: LegacyFrontend) -> None:
    # tooltip.js: kernel.object_info(token) reads found, name, call_def|init_definition|definition
    # and call_docstring|init_docstring|docstring.
    msg_id = frontend.send("shell", "object_info_request", {"oname": "f", "detail_level": 0})
    reply = frontend.reply(msg_id)
    _assert_v4_envelope(reply)
    assert reply["msg_type"] == "object_info_reply"
    assert reply["parent_header"]["msg_type"] == "object_info_request"
    content = reply["content"]
    assert content["found"] is True
    assert content["name"] == "f"
    assert content["definition"] == "f(a, b=1)"
    assert content["docstring"] == "Doc of f."
    assert content["type_name"] == "function"
    assert "\x1b" not in json.dumps(content)

    widget = frontend.reply(frontend.send("shell", "object_info_request", {"oname": "Widget"}))
    assert widget["content"]["init_definition"] == "Widget(size)"
    assert widget["content"]["docstring"] == "A widget."
    assert widget["content"]["init_docstring"] == "Make a widget of a size."

    missing = frontend.reply(
        frontend.send("shell", "object_info_request", {"oname": "no_such_name", "detail_level": 0})
    )
    assert missing["content"]["found"] is False
    assert missing["content"]["name"] == "no_such_name"


@pytest.mark.parametrize(
    ("line", "cursor_pos", "expected_match", "matched_text"),
    [
        ("import o", 8, "os", "o"),
        ("sys.std", 7, "stdout", "std"),
        ("x = sys.std", 11, "stdout", "std"),
        # kernel.js counts UTF-16 units: the emoji is 2 of them but 1 code point.
        ("s = '\U0001f600'; sys.std", 17, "stdout", "std"),
        ("zzz_no_such", 11, None, ""),
    ],
)
def test_complete_reply_has_matches_and_matched_text(
    frontend: LegacyFrontend,
    line: str,
    cursor_pos: int,
    expected_match: str | None,
    matched_text: str,
) -> None:
    frontend.run("import sys")
    # kernel.js Kernel.prototype.complete(line, cursor_pos)
    content = {"text": "", "line": line, "block": None, "cursor_pos": cursor_pos}
    reply = frontend.reply(frontend.send("shell", "complete_request", content))
    _assert_v4_envelope(reply)
    assert reply["msg_type"] == "complete_reply"
    assert reply["content"]["matched_text"] == matched_text
    if expected_match is None:
        assert reply["content"]["matches"] == []
    else:
        assert expected_match in reply["content"]["matches"]
    assert set(reply["content"]) == {"matches", "matched_text", "status"}


def test_input_request_and_reply(frontend: LegacyFrontend) -> None:
    msg_id = frontend.execute("name = input('Name: ')", user_variables=["name"])
    deadline = time.monotonic() + WAIT_SECONDS
    request = frontend.receive("stdin", deadline)
    _assert_v4_envelope(request)
    assert request["msg_type"] == "input_request"
    assert request["content"] == {"prompt": "Name: "}
    assert request["parent_header"]["msg_id"] == msg_id
    # kernel.js send_input_reply: a fresh message with an empty parent_header.
    frontend.send("stdin", "input_reply", {"value": "Ada"})
    reply = frontend.reply(msg_id)
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["user_variables"]["name"]["data"]["text/plain"] == "'Ada'"
    frontend.outputs(msg_id)


def test_comm_open_msg_close_from_the_frontend(frontend: LegacyFrontend) -> None:
    comm_id = kernel_js_uuid()
    open_id = frontend.send(
        "shell", "comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {"x": 1}}
    )
    opened = _by_type(frontend.outputs(open_id))["comm_msg"][0]
    _assert_v4_envelope(opened)
    assert opened["content"]["comm_id"] == comm_id
    assert opened["content"]["data"] == {"opened": {"x": 1}}

    msg_id = frontend.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"ping": 2}})
    echoed = _by_type(frontend.outputs(msg_id))["comm_msg"][0]
    assert echoed["content"] == {"comm_id": comm_id, "data": {"echo": {"ping": 2}}}

    close_id = frontend.send("shell", "comm_close", {"comm_id": comm_id, "data": {}})
    statuses = frontend.outputs(close_id)
    assert statuses[-1]["content"]["execution_state"] == "idle"


def test_comm_open_and_close_from_the_kernel(frontend: LegacyFrontend) -> None:
    _, outputs = frontend.run(
        "import comm\nc = comm.create_comm(target_name='legacy', data={'a': 1})\nc.close()"
    )
    by_type = _by_type(outputs)
    opened = by_type["comm_open"][0]["content"]
    assert opened["target_name"] == "legacy"
    assert opened["data"] == {"a": 1}
    assert by_type["comm_close"][0]["content"]["comm_id"] == opened["comm_id"]
