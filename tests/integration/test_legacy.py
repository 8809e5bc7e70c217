"""Legacy shell/iopub/stdin sockets through the proxy to a real jupyter_server + ipykernel."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from tests.support.legacy_client import LegacyKernelClient, kernel_js_session_id
from tests.support.servers import JupyterServer, ProxyProcess


def client(proxy: ProxyProcess, jupyter: JupyterServer, kernel_id: str, **kw) -> LegacyKernelClient:
    kw.setdefault("token", jupyter.token)
    return LegacyKernelClient(proxy.ws_url, kernel_id, **kw)


async def kernel_connections(jupyter: JupyterServer, kernel_id: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{jupyter.url}/api/kernels/{kernel_id}", headers=jupyter.auth_headers
        ) as resp:
            return int((await resp.json())["connections"])


async def test_execute_produces_v4_output(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        result = await kc.execute("print('hello'); 6 * 7")
        assert result.reply["header"]["msg_type"] == "execute_reply"
        assert result.reply["content"]["status"] == "ok"
        types = [m["header"]["msg_type"] for m in result.iopub]
        assert types[0] == "status" and "pyin" in types and "pyout" in types
        assert "execute_input" not in types and "execute_result" not in types
        assert result.stdout == "hello\n"
        stream = result.of_type("stream")[0]
        assert "data" in stream["content"] and "text" not in stream["content"]
        pyout = result.of_type("pyout")[0]
        assert pyout["content"]["data"]["text/plain"] == "42"
        assert all("version" not in m["header"] for m in result.iopub)
        assert all("channel" not in m for m in result.iopub)


async def test_error_display_and_clear_output(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        result = await kc.execute("1/0")
        assert result.reply["content"]["status"] == "error"
        pyerr = result.of_type("pyerr")
        assert pyerr and pyerr[0]["content"]["ename"] == "ZeroDivisionError"
        code = (
            "from IPython.display import display, HTML, clear_output\n"
            "display(HTML('<b>x</b>'))\nclear_output(wait=True)"
        )
        result = await kc.execute(code)
        display = result.of_type("display_data")[0]
        assert display["content"]["data"]["text/html"] == "<b>x</b>"
        assert result.of_type("clear_output")


async def test_input_over_stdin(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        result = await kc.execute("x = input('name? ')\nprint('got', x)", stdin_answers=["ada"])
        assert result.input_requests[0]["content"]["prompt"] == "name? "
        assert result.stdout == "got ada\n"


async def test_object_info_complete_and_kernel_info(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.execute("import os\nalpha_beta = 1")
        info = await kc.request("object_info_request", {"oname": "os.path.join", "detail_level": 0})
        assert info["header"]["msg_type"] == "object_info_reply"
        assert info["content"]["found"] is True
        assert info["content"]["name"] == "os.path.join"
        done = await kc.request(
            "complete_request",
            {"text": "", "line": "alpha_b", "block": None, "cursor_pos": 7},
        )
        assert done["header"]["msg_type"] == "complete_reply"
        assert "alpha_beta" in done["content"]["matches"]
        assert done["content"]["matched_text"] == "alpha_b"
        nothing = await kc.request(
            "complete_request", {"text": "", "line": "zzqqxx", "block": None, "cursor_pos": 6}
        )
        assert nothing["content"]["matches"] == []
        kinfo = await kc.request("kernel_info_request", {})
        assert kinfo["header"]["msg_type"] == "kernel_info_reply"
        assert isinstance(kinfo["content"]["protocol_version"], list)
        assert kinfo["content"]["language"] == "python"


async def test_comm_messages_reach_the_kernel_and_back(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        setup = (
            "def _target(comm, msg):\n"
            "    comm.send({'echo': msg['content']['data']})\n"
            "    @comm.on_msg\n"
            "    def _m(m):\n"
            "        comm.send({'got': m['content']['data']})\n"
            "get_ipython().kernel.comm_manager.register_target('echo', _target)"
        )
        assert (await kc.execute(setup)).reply["content"]["status"] == "ok"
        start = len(kc.received["iopub"])
        await kc.send_shell(
            "comm_open", {"comm_id": "c1", "target_name": "echo", "data": {"hi": 1}}
        )
        echo = await kc.wait_for(
            "iopub", lambda m: m["header"]["msg_type"] == "comm_msg", start=start
        )
        assert echo["content"]["data"] == {"echo": {"hi": 1}}
        start = kc.received["iopub"].index(echo) + 1
        await kc.send_shell("comm_msg", {"comm_id": "c1", "data": {"n": 2}})
        got = await kc.wait_for(
            "iopub", lambda m: m["header"]["msg_type"] == "comm_msg", start=start
        )
        assert got["content"]["data"] == {"got": {"n": 2}}
        await kc.send_shell("comm_close", {"comm_id": "c1", "data": {}})
        result = await kc.execute("print(len(get_ipython().kernel.comm_manager.comms))")
        assert result.stdout.strip() == "0"


async def test_interrupt_and_restart_over_rest(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        msg_id = await kc.send_shell(
            "execute_request",
            {"code": "import time\nfor _ in range(600): time.sleep(0.1)", "silent": False},
        )
        await kc.wait_for(
            "iopub",
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "pyin"
            ),
        )
        async with aiohttp.ClientSession() as http:
            url = f"{proxy.url}/api/kernels/{kernel_id}/interrupt"
            async with http.post(url, headers=jupyter.auth_headers) as resp:
                assert resp.status == 204
            reply = await kc.wait_for("shell", lambda m: m["parent_header"].get("msg_id") == msg_id)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
            url = f"{proxy.url}/api/kernels/{kernel_id}/restart"
            async with http.post(url, headers=jupyter.auth_headers) as resp:
                assert resp.status == 200
        await kc.wait_until_ready()
        result = await kc.execute("print('alive')")
        assert result.stdout == "alive\n"


async def test_restarting_status_after_kernel_dies(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.send_shell("execute_request", {"code": "import os; os._exit(1)", "silent": False})
        status = await kc.wait_for(
            "iopub",
            lambda m: (
                m["header"]["msg_type"] == "status"
                and m["content"]["execution_state"] == "restarting"
            ),
            timeout=30,
        )
        assert status["content"]["execution_state"] == "restarting"
        await kc.wait_until_ready()
        result = await kc.execute("print('back')", timeout=60)
        assert result.stdout == "back\n"


async def test_two_sessions_on_one_kernel_get_only_their_replies(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as a, client(proxy, jupyter, kernel_id) as b:
        ra, rb = await asyncio.gather(a.execute("print('A')"), b.execute("print('B')"))
        assert ra.stdout == "A\n" and rb.stdout == "B\n"
        mine_a = {m["parent_header"].get("msg_id") for m in a.received["shell"]}
        mine_b = {m["parent_header"].get("msg_id") for m in b.received["shell"]}
        assert not mine_a & mine_b
        assert await kernel_connections(jupyter, kernel_id) == 2


async def test_reconnect_with_same_session_id(proxy, jupyter, kernel_id):
    sid = kernel_js_session_id()
    async with client(proxy, jupyter, kernel_id, session_id=sid) as kc:
        await kc.execute("counter = 41")
    async with client(proxy, jupyter, kernel_id, session_id=sid) as kc:
        result = await kc.execute("counter + 1")
        assert result.of_type("pyout")[0]["content"]["data"]["text/plain"] == "42"


async def test_five_megabyte_output_intact(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        result = await kc.execute("print('x' * (5 * 1024 * 1024))", timeout=120)
        assert result.stdout == "x" * (5 * 1024 * 1024) + "\n"


async def test_ipython1_path_form(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id, path_form="kernels") as kc:
        assert (await kc.execute("print(1)")).stdout == "1\n"


async def test_v5_client_is_not_adapted(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id, version="5.3") as kc:
        result = await kc.execute("print('five'); 5")
        types = {m["header"]["msg_type"] for m in result.iopub}
        assert "execute_result" in types and "pyout" not in types
        assert result.of_type("stream")[0]["content"]["text"] == "five\n"


async def test_output_held_until_iopub_attaches(proxy, jupyter, kernel_id):
    kc = client(proxy, jupyter, kernel_id)
    try:
        await kc.connect(("shell", "stdin"))
        msg_id = await kc.send_shell("execute_request", {"code": "print('early')", "silent": False})
        await kc.wait_for("shell", lambda m: m["parent_header"].get("msg_id") == msg_id)
        await kc.connect(("iopub",))
        stream = await kc.wait_for("iopub", lambda m: m["header"]["msg_type"] == "stream")
        assert stream["content"]["data"] == "early\n"
        types = [m["header"]["msg_type"] for m in kc.received["iopub"]]
        assert types.index("pyin") < types.index("stream")
    finally:
        await kc.close()


async def test_frames_on_iopub_are_ignored(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.send("iopub", kc.make_msg("execute_request", {"code": "raise SystemExit"}))
        assert (await kc.execute("print('still here')")).stdout == "still here\n"


async def test_second_socket_for_a_channel_replaces_the_first(proxy, jupyter, kernel_id):
    sid = kernel_js_session_id()
    async with client(proxy, jupyter, kernel_id, session_id=sid) as first:
        second = client(proxy, jupyter, kernel_id, session_id=sid)
        try:
            await second.connect()
            closed = await first.wait_closed("iopub")
            assert closed.code == 1000 and "replaced" in closed.reason
            assert (await second.execute("print(2)")).stdout == "2\n"
        finally:
            await second.close()


async def test_upstream_closed_when_all_sockets_close(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.execute("pass")
        assert await kernel_connections(jupyter, kernel_id) == 1
    for _ in range(100):
        if await kernel_connections(jupyter, kernel_id) == 0:
            break
        await asyncio.sleep(0.1)
    assert await kernel_connections(jupyter, kernel_id) == 0


async def test_wrong_token_is_refused_with_reason(proxy, jupyter, kernel_id):
    kc = client(proxy, jupyter, kernel_id, token="not-the-token")
    try:
        await kc.connect()
        closed = await kc.wait_closed("shell")
        assert closed.code == 1008
        assert "credentials" in closed.reason
    finally:
        await kc.close()


async def test_unknown_kernel_is_refused_with_reason(proxy, jupyter):
    kc = client(proxy, jupyter, "00000000-0000-0000-0000-000000000000")
    try:
        await kc.connect()
        closed = await kc.wait_closed("shell")
        assert closed.code == 1011
        assert "not found" in closed.reason
    finally:
        await kc.close()


async def test_non_json_frame_closes_only_its_session(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as good, client(proxy, jupyter, kernel_id) as bad:
        await bad.sockets["shell"].send_str("this is not json")
        closed = await bad.wait_closed("iopub")
        assert closed.code == 1007
        assert closed.reason
        assert (await good.execute("print('fine')")).stdout == "fine\n"


@pytest.mark.parametrize(
    "handshake",
    ["no-colon-here", ":cookie-without-session", "bad id!:x", "A" * 300 + ":"],
)
async def test_malformed_handshake_closes_that_socket(proxy, jupyter, kernel_id, handshake):
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.ws_url}/api/kernels/{kernel_id}/shell?token={jupyter.token}"
        async with http.ws_connect(url) as ws:
            await ws.send_str(handshake)
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 1002
            assert msg.extra
    async with client(proxy, jupyter, kernel_id) as kc:
        assert (await kc.execute("print(3)")).stdout == "3\n"


async def test_binary_frame_from_legacy_client_is_refused(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.sockets["shell"].send_bytes(b"\x00\x01")
        closed = await kc.wait_closed("stdin")
        assert closed.code == 1003


async def test_bad_kernel_id_is_not_a_legacy_socket(proxy, jupyter):
    async with aiohttp.ClientSession() as http:
        url = f"{proxy.url}/api/kernels/..%2F..%2Fetc/shell?token={jupyter.token}"
        async with http.get(url) as resp:
            assert resp.status == 404


async def test_session_messages_carry_no_channel_key(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        await kc.execute("print(1)")
        for channel in ("shell", "iopub"):
            for raw in kc.raw[channel]:
                assert '"channel"' not in raw[-40:]
                assert "channel" not in orjson.loads(raw)


async def test_request_the_adapter_cannot_read_closes_its_session(proxy, jupyter, kernel_id):
    async with client(proxy, jupyter, kernel_id) as kc:
        # A v4 complete_request must carry the line and cursor; without them there is no
        # faithful v5 request to send.
        await kc.send_shell("complete_request", {"text": "x"})
        closed = await kc.wait_closed("shell")
        assert closed.code == 1007
        assert "complete_request" in closed.reason
