"""Soak: 1,000 concurrent legacy sessions through the proxy against the stub upstream."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.reliability.figures import report_figure
from tests.support.legacy_client import LegacyKernelClient
from tests.support.servers import (
    REPO,
    ProxyProcess,
    free_port,
    proxy_config,
    start_proxy,
    wait_for_port,
)

SESSIONS = 1000
SESSIONS_PER_KERNEL = 10
REQUESTS_PER_SESSION = 10
FLOOD_MESSAGES = 200
CONNECT_BATCH = 100
WANTED_FILES = 16 * SESSIONS  # client + proxy + stub sockets, with room to spare


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE (inherited by subprocesses started afterwards) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.fixture
def soak_proxy() -> Iterator[ProxyProcess]:
    limit = raise_open_file_limit()
    if limit < 8 * SESSIONS:
        pytest.fail(f"open-file limit {limit} is too low for {SESSIONS} sessions")
    port = free_port()
    stub = subprocess.Popen(
        [sys.executable, "-m", "bench.stub_upstream", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 30, stub)
        proxy = start_proxy(
            proxy_config(
                f"http://127.0.0.1:{port}",
                admin={"enabled": False},
                logging={"level": "warning", "access_log": False},
            )
        )
        yield proxy
        proxy.stop()
    finally:
        stub.terminate()
        stub.wait(10)


async def _run_session(client: LegacyKernelClient) -> tuple[int, int]:
    """Send requests and one flood; return (shell replies, iopub stream messages) received."""
    request_ids = [
        await client.send_shell("execute_request", {"code": f"x = {n}", "silent": False})
        for n in range(REQUESTS_PER_SESSION)
    ]
    flood_id = await client.send_shell(
        "execute_request",
        {"code": f"%bench flood count={FLOOD_MESSAGES} size=200", "silent": False},
    )
    for msg_id in [*request_ids, flood_id]:
        await client.wait_for(
            "shell", lambda m, i=msg_id: m["parent_header"].get("msg_id") == i, timeout=120
        )
    replies = sum(
        m["parent_header"].get("msg_id") in {*request_ids, flood_id}
        for m in client.received["shell"]
    )
    streams = sum(
        m["parent_header"].get("msg_id") == flood_id and m["header"]["msg_type"] == "stream"
        for m in client.received["iopub"]
    )
    return replies, streams


async def _until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def test_thousand_sessions_every_message_accounted_for(soak_proxy: ProxyProcess):
    kernels = [str(uuid.uuid4()) for _ in range(SESSIONS // SESSIONS_PER_KERNEL)]
    clients = [
        LegacyKernelClient(soak_proxy.ws_url, kernels[n // SESSIONS_PER_KERNEL])
        for n in range(SESSIONS)
    ]
    started = time.monotonic()
    try:
        for first in range(0, SESSIONS, CONNECT_BATCH):
            await asyncio.gather(*(c.connect() for c in clients[first : first + CONNECT_BATCH]))
        connected = time.monotonic() - started
        counts = await asyncio.gather(*(_run_session(c) for c in clients))
        # The flood's stream messages precede its reply upstream; give iopub the same chance.
        await _until(lambda: all(_streams_done(c) for c in clients), 60)
        counts = [(r, _streams(c)) for c, (r, _) in zip(clients, counts, strict=True)]
        closed = sum(bool(c.closed) for c in clients)
        assert closed == 0, f"{closed} sessions lost a socket"
        expected_replies = REQUESTS_PER_SESSION + 1
        short = [(i, r, s) for i, (r, s) in enumerate(counts)
                 if r != expected_replies or s != FLOOD_MESSAGES]  # fmt: skip
        assert not short, f"sessions missing messages (index, replies, streams): {short[:10]}"
        report_figure(
            "soak",
            sessions=SESSIONS,
            sockets=3 * SESSIONS,
            messages_to_clients=sum(r + s for r, s in counts),
            requests_from_clients=SESSIONS * expected_replies,
            lost=0,
            seconds_to_connect=round(connected, 1),
            seconds_total=round(time.monotonic() - started, 1),
        )
    finally:
        for first in range(0, SESSIONS, CONNECT_BATCH):
            await asyncio.gather(
                *(c.close() for c in clients[first : first + CONNECT_BATCH]), return_exceptions=True
            )
    assert soak_proxy.proc is not None and soak_proxy.proc.poll() is None


def _flood_id(client: LegacyKernelClient) -> str | None:
    for msg in client.received["shell"]:
        if (msg["metadata"] or {}).get("bench"):
            return str(msg["parent_header"].get("msg_id"))
    return None


def _streams(client: LegacyKernelClient) -> int:
    flood = _flood_id(client)
    return sum(
        m["parent_header"].get("msg_id") == flood and m["header"]["msg_type"] == "stream"
        for m in client.received["iopub"]
    )


def _streams_done(client: LegacyKernelClient) -> bool:
    return _streams(client) >= FLOOD_MESSAGES
