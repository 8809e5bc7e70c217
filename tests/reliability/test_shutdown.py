"""SIGTERM: during a flood (deadline, exit code, 1012) and as a graceful restart (no loss)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp

from tests.reliability.figures import report_figure
from tests.reliability.numbered import check_sequence, is_idle_of, lines_for, numbered_lines_code
from tests.support.legacy_client import CHANNELS, LegacyKernelClient, kernel_js_session_id
from tests.support.servers import JupyterServer, proxy_config

DEADLINE = 5.0
MARGIN = 3.0  # interpreter exit after the deadline


async def test_sigterm_during_flood_exits_cleanly_within_deadline(
    jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(
        proxy_config(jupyter.url, admin={"enabled": False}, shutdown={"deadline": DEADLINE})
    )
    assert proxy.proc is not None
    client = LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token)
    await client.connect()
    try:
        await client.execute("pass")
        flood = "for i in range(100000):\n    print(i, 'y' * 2000)\n"
        msg_id = await client.send_shell("execute_request", {"code": flood, "silent": False})
        await client.wait_for(
            "iopub",
            lambda m: (
                m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "stream"
            ),
        )
        proxy.signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proxy.proc.wait, DEADLINE + MARGIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"proxy alive {DEADLINE + MARGIN}s after SIGTERM") from None
        assert code == 0
        for channel in CHANNELS:
            closed = await client.wait_closed(channel)
            assert closed.code == 1012, (channel, closed)
            assert closed.reason
        log = proxy.log_text()
        assert "Traceback" not in log, log[-3000:]
        assert "shutting down" in log
    finally:
        await client.close()
        await interrupt(jupyter, kernel_id)


async def interrupt(jupyter: JupyterServer, kernel_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{jupyter.url}/api/kernels/{kernel_id}/interrupt"
        async with http.post(url, headers=jupyter.auth_headers) as resp:
            await resp.read()


async def test_graceful_restart_mid_output_loses_nothing(
    jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(proxy_config(jupyter.url, admin={"enabled": False}))
    count = 3000
    restarts = 2
    client = LegacyKernelClient(
        proxy.ws_url, kernel_id, token=jupyter.token, session_id=kernel_js_session_id()
    )
    try:
        await client.connect()
        await client.execute("pass")
        msg_id = await client.send_shell(
            "execute_request", {"code": numbered_lines_code(count), "silent": False}
        )
        for at in (700, 1900)[:restarts]:
            deadline = time.monotonic() + 60
            while (lines_for(client, msg_id) or [0])[-1] < at:
                assert time.monotonic() < deadline, "output stalled"
                await asyncio.sleep(0.01)
            assert await asyncio.to_thread(proxy.stop, signal.SIGTERM) == 0
            for channel in CHANNELS:
                assert (await client.wait_closed(channel)).code == 1012
            await client.close()
            await asyncio.to_thread(proxy.start)  # same port, same config
            await client.connect()  # same session id: jupyter_server replays what it buffered
        await client.wait_for("iopub", is_idle_of(msg_id), timeout=120)
        gaps = check_sequence(lines_for(client, msg_id), count)
        report_figure(
            "graceful_restart",
            lines=count,
            restarts=restarts,
            lost=[(g.first, g.last) for g in gaps],
        )
        assert gaps == [], f"lines lost across graceful restarts: {gaps}"
        assert "Traceback" not in proxy.log_text()
    finally:
        await client.close()
