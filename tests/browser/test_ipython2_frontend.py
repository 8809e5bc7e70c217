"""The unmodified IPython 2.4.1 kernel.js, in headless Chromium, against jupyter_server 2.x.

Every request goes through kernel.js's own API and every assertion reads what kernel.js's
callbacks delivered to the page. The graceful proxy restart runs last because it stops the
proxy the other tests share (the `harness` fixture starts it again if needed).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from typing import Any

import pytest

from tests.support.servers import JupyterServer

from .frontend import HarnessPage

pytestmark = pytest.mark.browser


def outputs_of(record: dict[str, Any], msg_type: str) -> list[dict[str, Any]]:
    return [output["content"] for output in record["outputs"] if output["msg_type"] == msg_type]


def stdout_of(record: dict[str, Any]) -> str:
    streams = outputs_of(record, "stream")
    assert all("data" in stream for stream in streams), f"not msg spec v4 streams: {streams}"
    return "".join(stream["data"] for stream in streams if stream["name"] == "stdout")


def kernel_ids(jupyter: JupyterServer) -> list[str]:
    request = urllib.request.Request(f"{jupyter.url}/api/kernels", headers=jupyter.auth_headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return [kernel["id"] for kernel in json.load(response)]


def test_kernel_started_through_rest_and_websockets(
    harness: HarnessPage, jupyter: JupyterServer
) -> None:
    assert harness.evaluate("IPython.version") == "2.4.1"
    assert harness.evaluate("results.kernel_id") in kernel_ids(jupyter)
    sockets = harness.evaluate("results.sockets")
    assert sorted(socket["channel"] for socket in sockets) == ["iopub", "shell", "stdin"]
    assert all(socket["opened"] and socket["close"] is None for socket in sockets), sockets


def test_execute_delivers_stream_pyout_and_pyerr(harness: HarnessPage) -> None:
    record = harness.execute("print('hello from the kernel')\n6 * 7")

    assert record["reply"]["msg_type"] == "execute_reply"
    assert record["reply"]["content"]["status"] == "ok"
    assert stdout_of(record) == "hello from the kernel\n"
    [pyout] = outputs_of(record, "pyout")
    assert pyout["data"]["text/plain"] == "42"
    assert pyout["execution_count"] == record["reply"]["content"]["execution_count"]
    assert record["statuses"] == ["busy", "idle"]

    record = harness.execute("1 / 0")

    assert record["reply"]["content"]["status"] == "error"
    [pyerr] = outputs_of(record, "pyerr")
    assert pyerr["ename"] == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in pyerr["traceback"])
    assert {output["msg_type"] for output in record["outputs"]} == {"pyerr"}


def test_input_request_answered_with_send_input_reply(harness: HarnessPage) -> None:
    msg_id = harness.send_execute("name = input('Your name? ')\nprint('Hello,', name)")
    harness.wait_for(
        "id => results.requests[id].input_requests.length > 0", "input_request", arg=msg_id
    )
    [request] = harness.record(msg_id)["input_requests"]
    assert request["msg_type"] == "input_request"
    assert request["content"]["prompt"] == "Your name? "

    harness.evaluate("harness.kernel.send_input_reply('Ada')")
    record = harness.wait_finished(msg_id, "execute_reply after input_reply")

    assert record["reply"]["content"]["status"] == "ok"
    assert stdout_of(record) == "Hello, Ada\n"


def test_object_info_reply_has_what_the_tooltip_shows(harness: HarnessPage) -> None:
    msg_id = harness.evaluate("harness.object_info('len')")
    reply = harness.wait_finished(msg_id, "object_info_reply")["reply"]

    assert reply["msg_type"] == "object_info_reply"
    content = reply["content"]
    assert content["found"] is True
    assert content["name"] == "len"
    # tooltip.js shows the first docstring it finds among these keys
    docstrings = [content.get(key) for key in ("call_docstring", "init_docstring", "docstring")]
    assert any(doc and "number of items" in doc for doc in docstrings), content


def test_complete_reply_lists_matches(harness: HarnessPage) -> None:
    harness.execute("alpha_value = 1\nalpha_vector = 2")

    msg_id = harness.evaluate("harness.complete('x = alpha_v', 11)")
    reply = harness.wait_finished(msg_id, "complete_reply")["reply"]

    assert reply["msg_type"] == "complete_reply"
    assert {"alpha_value", "alpha_vector"} <= set(reply["content"]["matches"])
    assert reply["content"]["matched_text"] == "alpha_v"


def test_interrupt_stops_a_running_cell(harness: HarnessPage) -> None:
    msg_id = harness.send_execute("import time\nprint('sleeping', flush=True)\ntime.sleep(120)")
    harness.wait_for(
        "id => harness.stream_text(id).indexOf('sleeping') >= 0", "output of the cell", msg_id
    )

    harness.evaluate("harness.kernel.interrupt()")
    record = harness.wait_finished(msg_id, "execute_reply after interrupt")

    assert record["reply"]["content"]["status"] == "error"
    assert record["reply"]["content"]["ename"] == "KeyboardInterrupt"
    [pyerr] = outputs_of(record, "pyerr")
    assert pyerr["ename"] == "KeyboardInterrupt"
    assert harness.execute("'still alive'")["reply"]["content"]["status"] == "ok"


def test_restart_kernel_and_keep_working(harness: HarnessPage) -> None:
    harness.execute("before_restart = 1")

    harness.evaluate("harness.kernel.restart()")
    harness.wait_for("() => harness.started_count() >= 2", "status_started after restart")

    record = harness.execute("'before_restart' in dir(), 20 + 1")
    [pyout] = outputs_of(record, "pyout")
    assert pyout["data"]["text/plain"] == "(False, 21)"
    events = [event["name"] for event in harness.evaluate("results.events")]
    assert events.count("status_restarting") == 1, events
    assert "websocket_closed" not in events, events


def test_graceful_proxy_restart_delivers_every_line_once(harness: HarnessPage) -> None:
    lines = 1500
    code = f"import time\nfor i in range({lines}):\n    print(i, flush=True)\n    time.sleep(0.01)"
    msg_id = harness.send_execute(code)
    harness.wait_for(
        "id => harness.stream_text(id).split('\\n').length > 100", "first numbered lines", msg_id
    )

    exit_code = harness.proxy.stop(signal.SIGTERM)
    assert exit_code == 0, f"proxy exited with {exit_code} on SIGTERM"
    harness.wait_for("() => results.sockets.every(s => s.close !== null)", "close events")
    first_sockets = harness.evaluate("results.sockets")
    harness.proxy.start()

    # notificationarea.js's glue reconnects 5 s after an unclean close
    harness.wait_for("() => harness.started_count() >= 2", "reconnect after proxy restart")
    record = harness.wait_finished(msg_id, "the rest of the numbered lines", timeout=120)

    # kernel.js reacts to the first close only, and reconnects only if it was not clean
    first = min(first_sockets, key=lambda s: s["close"]["t"])
    assert not first["close"]["wasClean"], first_sockets
    closed = [e for e in harness.evaluate("results.events") if e["name"] == "websocket_closed"]
    assert [e["early"] for e in closed] == [False], closed
    assert record["reply"]["content"]["status"] == "ok"
    received = stdout_of(record).splitlines()
    missing = sorted(set(map(str, range(lines))) - set(received), key=int)
    assert received == [str(i) for i in range(lines)], (
        f"{len(received)} lines, missing {missing[:20]}, "
        f"first disorder at {next((i for i, v in enumerate(received) if v != str(i)), None)}"
    )
