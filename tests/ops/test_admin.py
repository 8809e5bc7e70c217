"""The admin listener against a real proxy process, jupyter_server and legacy traffic."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import admin_app, render_status_page
from proxy.app import ProxyServer
from proxy.config import config_from_dict
from tests.ops.support import get_json, wait_until
from tests.support.legacy_client import LegacyKernelClient
from tests.support.servers import free_port, proxy_config


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_healthz_and_readyz_when_upstreams_answer(start_proxy, jupyter, echo_factory):
    echo = echo_factory("echo")
    config = proxy_config(jupyter.url)
    config["routes"].append({"prefix": "/echo/", "upstream": echo.url})
    proxy = start_proxy(config)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.admin_url}/healthz") as response:
            assert response.status == 200
            assert (await response.text()).strip() == "ok"
        status, body = await get_json(http, f"{proxy.admin_url}/readyz")
        assert status == 200, body
        assert body["ready"] is True
        assert {r["prefix"] for r in body["routes"]} == {"/", "/echo/"}
        assert all(r["reachable"] for r in body["routes"])


async def test_readyz_names_the_unreachable_route(start_proxy, jupyter):
    dead = f"http://127.0.0.1:{free_port()}"
    config = proxy_config(jupyter.url)
    config["routes"].append({"prefix": "/gone/", "upstream": dead})
    proxy = start_proxy(config)
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{proxy.admin_url}/readyz")
        assert status == 503
        assert body["ready"] is False
        assert body["unreachable"] == ["/gone/"]
        gone = next(r for r in body["routes"] if r["prefix"] == "/gone/")
        assert gone["upstream"].startswith(dead) and gone["error"]
        async with http.get(f"{proxy.admin_url}/healthz") as response:
            assert response.status == 200  # alive even when not ready


async def test_metrics_status_and_status_json_show_a_live_legacy_session(
    start_proxy, jupyter, kernel_id
):
    proxy = start_proxy(proxy_config(jupyter.url, sessions={"grace_period": 0.5}))
    kc = LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token)
    async with kc, aiohttp.ClientSession() as http:
        result = await kc.execute("print('metrics'); 1 + 1")
        assert result.reply["content"]["status"] == "ok"

        async with http.get(f"{proxy.admin_url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = samples(await response.text())
        assert metrics[("channels_proxy_legacy_sessions", ())] == 1
        for channel in ("shell", "stdin", "iopub"):
            assert metrics[("channels_proxy_legacy_sockets", (("channel", channel),))] == 1
        shell_in = (
            "channels_proxy_messages_total",
            (("channel", "shell"), ("direction", "to_upstream")),
        )
        iopub_out = (
            "channels_proxy_messages_total",
            (("channel", "iopub"), ("direction", "to_client")),
        )
        assert metrics[shell_in] >= 1
        assert metrics[iopub_out] >= 4  # busy, pyin, stream, pyout, idle
        assert metrics[("channels_proxy_upstream_connections", (("kind", "legacy"),))] == 1

        status, document = await get_json(http, f"{proxy.admin_url}/status.json")
        assert status == 200
        assert document["version"]
        assert [r["prefix"] for r in document["routes"]] == ["/"]
        (session,) = document["sessions"]
        assert session["kernel_id"] == kernel_id
        assert session["session_id"] == kc.session_id
        assert sorted(session["attached"]) == ["iopub", "shell", "stdin"]
        assert session["messages_to_client"]["iopub"] >= 4

        async with http.get(f"{proxy.admin_url}/status") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            page = await response.text()
        assert kernel_id in page and kc.session_id in page
        assert 'http-equiv="refresh"' in page

    # Once the client is gone (and the grace period passed) the session leaves the page.
    async def session_gone() -> bool:
        async with aiohttp.ClientSession() as http:
            _, document = await get_json(http, f"{proxy.admin_url}/status.json")
        return document["sessions"] == []

    await wait_until(session_gone, timeout=60)


def test_status_page_escapes_everything():
    hostile = "<script>alert(1)</script>"
    page = render_status_page(
        {
            "version": hostile,
            "accepting": True,
            "routes": [{"prefix": f"/{hostile}", "upstream": "http://x/\"'><b>"}],
            "sessions": [
                {
                    "kernel_id": hostile,
                    "session_id": "a&b",
                    "attached": [hostile],
                    "messages_to_client": {hostile: 1},
                }
            ],
        }
    )
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "a&amp;b" in page


async def test_readyz_is_503_while_not_accepting_and_metrics_negotiate(echo_factory):
    echo = echo_factory("echo")
    server = ProxyServer(config_from_dict({"routes": [{"prefix": "/", "upstream": echo.url}]}))
    runner = web.AppRunner(admin_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            server.accepting = False  # as during shutdown
            status, body = await get_json(http, f"{base}/readyz")
            assert (status, body["reason"]) == (503, "shutting down")
            server.accepting = True
            status, body = await get_json(http, f"{base}/readyz")
            assert status == 200 and body["routes"][0]["status"] == 200

            accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
            async with http.get(f"{base}/metrics", headers=accept) as response:
                assert response.content_type == "application/openmetrics-text"
                assert (await response.text()).rstrip().endswith("# EOF")
    finally:
        await runner.cleanup()
