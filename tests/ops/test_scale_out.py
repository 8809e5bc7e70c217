"""Several proxy instances behind Debian's nginx hashing on the kernel id (the shipped example)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.ops.support import NGINX, Nginx, get_json
from tests.support.legacy_client import CHANNELS, LegacyKernelClient
from tests.support.servers import ProxyProcess, free_port, proxy_config

pytestmark = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx is not installed (Debian package nginx-light)"
)


async def sessions_of(http: aiohttp.ClientSession, proxy: ProxyProcess) -> list[dict]:
    status, document = await get_json(http, f"{proxy.admin_url}/status.json")
    assert status == 200
    return list(document["sessions"])


async def test_legacy_session_fails_over_to_another_instance(
    start_proxy, jupyter, kernel_id, tmp_path
):
    instances = [
        start_proxy(proxy_config(jupyter.url, shutdown={"deadline": 5.0})) for _ in range(2)
    ]
    nginx = Nginx(tmp_path / "nginx", [p.port for p in instances]).start()
    try:
        kc = LegacyKernelClient(f"ws://127.0.0.1:{nginx.port}", kernel_id, token=jupyter.token)
        async with kc, aiohttp.ClientSession() as http:
            result = await kc.execute("carried = 41")
            assert result.reply["content"]["status"] == "ok"

            # All three sockets of the session landed on one instance.
            placed = [await sessions_of(http, p) for p in instances]
            serving_index = next(i for i, sessions in enumerate(placed) if sessions)
            serving, standby = instances[serving_index], instances[1 - serving_index]
            (session,) = placed[serving_index]
            assert placed[1 - serving_index] == []
            assert session["session_id"] == kc.session_id
            assert sorted(session["attached"]) == sorted(CHANNELS)

            # Stop that instance the way an orchestrator does; it drains and closes the sockets.
            assert await asyncio.to_thread(serving.stop) == 0
            for channel in CHANNELS:
                await kc.wait_closed(channel)

            # The client comes back as kernel.js does: same session id, all three sockets.
            await kc.connect()
            result = await kc.execute("carried + 1")
            assert result.reply["content"]["status"] == "ok"
            assert result.of_type("pyout")[0]["content"]["data"]["text/plain"] == "42"

            (moved,) = await sessions_of(http, standby)
            assert moved["session_id"] == kc.session_id
            assert moved["kernel_id"] == kernel_id
            assert sorted(moved["attached"]) == sorted(CHANNELS)
    finally:
        nginx.stop()
    assert "emerg" not in nginx.error_log()


def test_shipped_nginx_example_is_valid(tmp_path):
    nginx = Nginx(tmp_path, [free_port(), free_port()])
    checked = nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "hash $kernel_key consistent;" in nginx.site_config
