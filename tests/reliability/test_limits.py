"""Limits with clear refusals: each one is a close code, a reason and a line in the proxy log."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.legacy_client import LegacyKernelClient, kernel_js_session_id
from tests.support.servers import JupyterServer, ProxyProcess, proxy_config

MiB = 1024 * 1024


@pytest.fixture
def limited_proxy(jupyter: JupyterServer, proxy_factory) -> ProxyProcess:
    return proxy_factory(
        proxy_config(
            jupyter.url,
            admin={"enabled": False},
            limits={"handshake_timeout": 1.0, "max_message_bytes": MiB, "max_sessions": 2},
            sessions={"grace_period": 0.2},
        )
    )


async def test_silent_socket_is_refused_after_handshake_timeout(limited_proxy, jupyter, kernel_id):
    async with aiohttp.ClientSession() as http:
        url = f"{limited_proxy.ws_url}/api/kernels/{kernel_id}/iopub?token={jupyter.token}"
        async with http.ws_connect(url) as ws:
            msg = await ws.receive(timeout=30)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1002
    assert msg.extra == "no session handshake within 1s"
    assert "handshake refused" in limited_proxy.log_text()


async def test_client_frame_over_the_size_limit_is_refused_with_1009(
    limited_proxy, jupyter, kernel_id
):
    async with LegacyKernelClient(limited_proxy.ws_url, kernel_id, token=jupyter.token) as big:
        oversized = big.make_msg("execute_request", {"code": "#" + "x" * (2 * MiB)})
        await big.send("shell", oversized)
        # aiohttp closes the offending socket itself (1009, no room for a reason); the
        # session's other sockets carry the reason.
        assert (await big.wait_closed("shell")).code == 1009
        closed = await big.wait_closed("iopub")
        assert closed.code == 1009
        assert "max_message_bytes" in closed.reason, closed
    log = limited_proxy.log_text()
    assert "larger than limits.max_message_bytes" in log, log[-2000:]
    async with LegacyKernelClient(limited_proxy.ws_url, kernel_id, token=jupyter.token) as ok:
        assert (await ok.execute("print('fits')")).stdout == "fits\n"


async def test_upstream_message_over_the_size_limit_is_refused_with_1009(
    limited_proxy, jupyter, kernel_id
):
    async with LegacyKernelClient(limited_proxy.ws_url, kernel_id, token=jupyter.token) as big:
        await big.send_shell("execute_request", {"code": "print('x' * (2 * 1024 * 1024))"})
        closed = await big.wait_closed("iopub", timeout=20)
        assert closed.code == 1009, closed
        assert closed.reason
    log = limited_proxy.log_text()
    assert "larger than limits.max_message_bytes" in log, log[-2000:]


async def test_session_limit_refuses_the_third_session_with_1013(limited_proxy, jupyter, kernel_id):
    def client() -> LegacyKernelClient:
        return LegacyKernelClient(
            limited_proxy.ws_url, kernel_id, token=jupyter.token, session_id=kernel_js_session_id()
        )

    async with client() as first, client() as second:
        third = client()
        try:
            await third.connect()
            closed = await third.wait_closed("shell")
            assert closed.code == 1013
            assert closed.reason == "session limit reached (2)"
        finally:
            await third.close()
        assert (await first.execute("print(1)")).stdout == "1\n"
        assert (await second.execute("print(2)")).stdout == "2\n"
    assert "session refused" in limited_proxy.log_text()
