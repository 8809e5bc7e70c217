"""Upstream faults injected for real: TCP cuts between proxy and jupyter_server, a killed server."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.reliability.figures import report_figure
from tests.reliability.numbered import (
    Gap,
    check_sequence,
    is_idle_of,
    lines_for,
    numbered_lines_code,
)
from tests.support.faultrelay import FaultRelay
from tests.support.legacy_client import LegacyKernelClient
from tests.support.servers import JupyterServer, proxy_config, start_jupyter_server

LINES = 3000
CUT_AT = (400, 1100, 1800, 2500)  # lines seen by the client when each cut is made


async def wait_for_lines(client: LegacyKernelClient, msg_id: str, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while True:
        seen = lines_for(client, msg_id)
        if seen and seen[-1] >= at_least:
            return seen[-1]
        if time.monotonic() > deadline:
            raise TimeoutError(f"line {at_least} not reached; last seen {seen[-1:]}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["close", "reset"])
async def test_upstream_cuts_mid_stream_lose_only_at_the_cut(
    mode, relay: FaultRelay, jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(proxy_config(relay.url, admin={"enabled": False}))
    client = LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token)
    await client.connect()
    try:
        await client.execute("pass")
        msg_id = await client.send_shell(
            "execute_request", {"code": numbered_lines_code(LINES), "silent": False}
        )
        seen_at_cut: list[int] = []
        for number, at in enumerate(CUT_AT, start=1):
            seen_at_cut.append(await wait_for_lines(client, msg_id, at))
            assert relay.cut(mode) == 1
            await relay.wait_accepted(number + 1)  # the proxy reconnected upstream
        await client.wait_for(
            "shell", lambda m: m["parent_header"].get("msg_id") == msg_id, timeout=120
        )
        await client.wait_for("iopub", is_idle_of(msg_id), timeout=60)
        assert client.closed == {}, "a legacy socket closed during upstream cuts"
        gaps = check_sequence(lines_for(client, msg_id), LINES)
        windows = [*seen_at_cut, LINES]
        for gap in gaps:
            assert any(
                windows[i] < gap.first and gap.last < windows[i + 1] for i in range(len(CUT_AT))
            ), f"{gap} is not right after a cut (client had seen {seen_at_cut} at the cuts)"
        assert len(gaps) <= len(CUT_AT)
        per_cut = lost_per_cut(gaps, seen_at_cut)
        report_figure(
            f"upstream_cut_{mode}",
            lines=LINES,
            cuts=len(CUT_AT),
            lost_total=sum(g.size for g in gaps),
            lost_per_cut=per_cut,
            relay_connections=relay.stats.accepted,
        )
        assert (await client.execute("print('after cuts')")).stdout == "after cuts\n"
    finally:
        await client.close()


def lost_per_cut(gaps: list[Gap], seen_at_cut: list[int]) -> list[int]:
    bounds = [*seen_at_cut, 1 << 62]
    return [
        sum(g.size for g in gaps if bounds[i] < g.first < bounds[i + 1])
        for i in range(len(seen_at_cut))
    ]


async def test_killed_server_closes_clients_with_reason_then_recovers(proxy_factory):
    server = start_jupyter_server()
    try:
        proxy = proxy_factory(
            proxy_config(
                server.url,
                admin={"enabled": False},
                sessions={"reconnect": {"attempts": 2, "initial_delay": 0.1, "max_delay": 0.2}},
            )
        )
        old_kernel = await server.create_kernel()
        client = LegacyKernelClient(proxy.ws_url, old_kernel, token=server.token)
        await client.connect()
        try:
            assert (await client.execute("print('before')")).stdout == "before\n"
            server.kill()
            for channel in ("shell", "iopub", "stdin"):
                closed = await client.wait_closed(channel, timeout=60)
                assert closed.code == 1011, closed
                assert "upstream unavailable after 3 attempts" in closed.reason
        finally:
            await client.close()
        assert "upstream unavailable after 3 attempts" in proxy.log_text()

        server.start()  # same port, same token
        new_kernel = await server.create_kernel()
        async with LegacyKernelClient(proxy.ws_url, new_kernel, token=server.token) as again:
            assert (await again.execute("print('after')")).stdout == "after\n"
        gone = LegacyKernelClient(proxy.ws_url, old_kernel, token=server.token)
        try:
            await gone.connect()
            closed = await gone.wait_closed("shell")
            assert closed.code == 1011 and "not found" in closed.reason
        finally:
            await gone.close()
    finally:
        server.stop()
