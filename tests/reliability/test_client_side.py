"""Legacy-side faults: a client that stops reading, one that drops and returns, dead peers."""

from __future__ import annotations

import asyncio
import struct
import threading
import time

import aiohttp
import psutil

from tests.reliability.figures import report_figure
from tests.reliability.numbered import check_sequence, is_idle_of, lines_for, numbered_lines_code
from tests.reliability.rawws import OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket, encode_frame
from tests.support.faultrelay import FaultRelay
from tests.support.legacy_client import CHANNELS, LegacyKernelClient, kernel_js_session_id
from tests.support.servers import JupyterServer, proxy_config

MiB = 1024 * 1024
PENDING_BYTES = 8 * MiB
FLOOD_CHUNKS = 200
CHUNK_BYTES = MiB
# What a session may legitimately hold beyond its byte budget: the message being adapted
# (parsed and re-encoded, a few copies of one chunk), aiohttp's read and write buffers.
RSS_ALLOWANCE = 2 * PENDING_BYTES + 16 * CHUNK_BYTES


class RssSampler:
    """Samples a process's RSS in a thread; `peak` is the highest value seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_slow_client_keeps_proxy_memory_bounded(
    jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(
        proxy_config(jupyter.url, admin={"enabled": False}, limits={"pending_bytes": PENDING_BYTES})
    )
    assert proxy.proc is not None
    client = LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token)
    await client.connect()
    try:
        await client.execute("print('x' * 1000000)")  # warm up: first big message adapted
        baseline = psutil.Process(proxy.proc.pid).memory_info().rss
        code = (
            f"for i in range({FLOOD_CHUNKS}):\n"
            f"    print(f'{{i:06d}}' + 'x' * {CHUNK_BYTES - 7}, flush=True)\n"
        )
        with RssSampler(proxy.proc.pid) as paused_rss:
            client.paused.clear()  # stop reading: client and proxy socket buffers fill
            msg_id = await client.send_shell("execute_request", {"code": code, "silent": False})
            # Enough time for the kernel to print everything and the proxy to be pushed back.
            await asyncio.sleep(15)
        with RssSampler(proxy.proc.pid) as draining_rss:
            client.paused.set()
            await client.wait_for("iopub", is_idle_of(msg_id), timeout=300)
        chunks: list[int] = []
        for msg in client.received["iopub"]:
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["header"]["msg_type"] == "stream"
            ):
                chunks.extend(int(line[:6]) for line in msg["content"]["data"].split("\n") if line)
        assert chunks == list(range(FLOOD_CHUNKS))
        peak = max(paused_rss.peak, draining_rss.peak)
        report_figure(
            "slow_client_rss",
            flood_mib=FLOOD_CHUNKS * CHUNK_BYTES // MiB,
            pending_bytes_mib=PENDING_BYTES // MiB,
            baseline_mib=round(baseline / MiB, 1),
            peak_paused_mib=round(paused_rss.peak / MiB, 1),
            peak_draining_mib=round(draining_rss.peak / MiB, 1),
            bound_mib=round((baseline + RSS_ALLOWANCE) / MiB, 1),
        )
        assert peak <= baseline + RSS_ALLOWANCE, (
            f"proxy RSS peaked at {peak / MiB:.0f} MiB, baseline {baseline / MiB:.0f} MiB"
        )
    finally:
        client.paused.set()
        await client.close()


async def drop_all_sockets(client: LegacyKernelClient) -> None:
    """Close all three sockets from the client side, reading everything sent before the close."""
    for ws in client.sockets.values():
        await ws.send_frame(struct.pack("!H", 1000), aiohttp.WSMsgType.CLOSE)
    for channel in CHANNELS:
        await client.wait_closed(channel)
    await client.close()


async def test_client_drop_and_return_within_grace_is_exactly_once(
    jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(
        proxy_config(jupyter.url, admin={"enabled": False}, sessions={"grace_period": 20})
    )
    count = 3000
    client = LegacyKernelClient(
        proxy.ws_url, kernel_id, token=jupyter.token, session_id=kernel_js_session_id()
    )
    drops = 3
    try:
        await client.connect()
        await client.execute("pass")
        msg_id = await client.send_shell(
            "execute_request", {"code": numbered_lines_code(count), "silent": False}
        )
        for at in (600, 1400, 2200)[:drops]:
            deadline = time.monotonic() + 60
            while (lines_for(client, msg_id) or [0])[-1] < at:
                assert time.monotonic() < deadline, "output stalled"
                await asyncio.sleep(0.01)
            await drop_all_sockets(client)
            await asyncio.sleep(0.3)  # output keeps coming upstream while nobody is attached
            await client.connect()
        await client.wait_for("iopub", is_idle_of(msg_id), timeout=120)
        gaps = check_sequence(lines_for(client, msg_id), count)
        report_figure(
            "client_drop_within_grace",
            lines=count,
            drops=drops,
            lost=[(g.first, g.last) for g in gaps],
        )
        assert gaps == [], f"lines lost across client drops: {gaps}"
        reply = await client.wait_for("shell", lambda m: m["parent_header"].get("msg_id") == msg_id)
        assert reply["content"]["status"] == "ok"
    finally:
        await client.close()


async def test_keepalive_keeps_answering_clients_and_closes_silent_ones(
    jupyter: JupyterServer, kernel_id, proxy_factory
):
    interval = 0.5
    proxy = proxy_factory(
        proxy_config(jupyter.url, admin={"enabled": False}, keepalive={"ping_interval": interval})
    )
    async with LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token) as answering:
        silent = await RawWebSocket.connect(
            proxy.port, f"/api/kernels/{kernel_id}/shell?token={jupyter.token}"
        )
        try:
            await silent.send(encode_frame(OP_TEXT, f"{kernel_js_session_id()}:".encode()))
            pings = 0
            while True:  # read everything, never answer a ping: the proxy must give up on us
                frame = await silent.read_frame(timeout=30)
                if frame is None or frame.opcode == OP_CLOSE:
                    break
                pings += frame.opcode == OP_PING
        finally:
            silent.close()
        assert pings >= 1
        await asyncio.sleep(6 * interval)
        assert answering.closed == {}
        assert (await answering.execute("print('alive')")).stdout == "alive\n"


async def test_upstream_that_stops_answering_pings_is_replaced(
    relay: FaultRelay, jupyter: JupyterServer, kernel_id, proxy_factory
):
    proxy = proxy_factory(
        proxy_config(relay.url, admin={"enabled": False}, keepalive={"ping_interval": 0.5})
    )
    async with LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token) as client:
        await client.execute("pass")
        assert relay.stats.accepted == 1
        relay.pause()  # the upstream goes silent without closing anything
        try:
            await relay.wait_accepted(2, timeout=30)  # the proxy gave up on it and reconnects
        finally:
            relay.resume()
        assert (await client.execute("print('through')")).stdout == "through\n"
        assert client.closed == {}
    assert "upstream lost" in proxy.log_text()
