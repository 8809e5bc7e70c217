"""Routes managed at run time: SIGHUP and file-watch reloads, refused bad files, `${VAR}`."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from tests.ops.support import RawConfigProxy, get_json, wait_for_log, wait_until
from tests.support.legacy_client import LegacyKernelClient
from tests.support.servers import REPO, free_port, proxy_config, wait_for_port


async def served_by(http: aiohttp.ClientSession, url: str) -> str:
    status, body = await get_json(http, url)
    assert status == 200, body
    return str(body["server"])


async def ws_roundtrip(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
    await ws.send_str(text)
    msg = await ws.receive(timeout=30)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return str(msg.data)


async def test_sighup_reload_keeps_open_connections_and_routes_new_ones(
    start_proxy, jupyter, kernel_id, echo_factory
):
    first, second = echo_factory("first"), echo_factory("second")
    config = proxy_config(jupyter.url)
    config["routes"].append({"prefix": "/svc/", "upstream": first.url})
    proxy = start_proxy(config)

    kc = LegacyKernelClient(proxy.ws_url, kernel_id, token=jupyter.token)
    async with kc, aiohttp.ClientSession() as http:
        await kc.execute("before_reload = 41")
        assert await served_by(http, f"{proxy.url}/svc/x") == "first"
        old_ws = await http.ws_connect(f"{proxy.ws_url}/svc/ws")
        assert await ws_roundtrip(old_ws, "a") == "first:a"

        config["routes"][1]["upstream"] = second.url
        config["routes"].append({"prefix": "/added/", "upstream": second.url})
        proxy.write_config(config)
        proxy.signal(signal.SIGHUP)
        wait_for_log(proxy, r"configuration reloaded: 3 routes")

        # New connections take the new routes ...
        assert await served_by(http, f"{proxy.url}/svc/x") == "second"
        assert await served_by(http, f"{proxy.url}/added/y") == "second"
        new_ws = await http.ws_connect(f"{proxy.ws_url}/svc/ws")
        assert await ws_roundtrip(new_ws, "b") == "second:b"
        # ... while the open ones carry on where they were.
        assert await ws_roundtrip(old_ws, "c") == "first:c"
        result = await kc.execute("before_reload + 1")
        assert result.of_type("pyout")[0]["content"]["data"]["text/plain"] == "42"
        _, status = await get_json(http, f"{proxy.admin_url}/status.json")
        assert [s["session_id"] for s in status["sessions"]] == [kc.session_id]
        assert status["sessions"][0]["upstream_connects"] == 1
        await old_ws.close()
        await new_ws.close()

        # A broken file is refused with a line naming the file and the problem; routes stay.
        proxy.config_path.write_text("routes:\n  - prefix: /svc/\n    upstream: [oops\n")
        proxy.signal(signal.SIGHUP)
        line = wait_for_log(proxy, r"reload refused")
        assert str(proxy.config_path) in line and "invalid YAML" in line
        proxy.config_path.write_text(
            "routes:\n  - prefix: nope\n    upstream: http://127.0.0.1:1\n"
        )
        proxy.signal(signal.SIGHUP)
        line = wait_for_log(proxy, r"reload refused", count=2)
        assert "routes[0].prefix" in line and "must start with '/'" in line
        assert await served_by(http, f"{proxy.url}/svc/x") == "second"
        assert await served_by(http, f"{proxy.url}/added/y") == "second"
        result = await kc.execute("before_reload + 2")
        assert result.of_type("pyout")[0]["content"]["data"]["text/plain"] == "43"
    assert proxy.proc is not None and proxy.proc.poll() is None


async def test_watch_reloads_when_the_file_changes(start_proxy, echo_factory):
    first, second = echo_factory("first"), echo_factory("second")
    config = proxy_config(first.url, watch=True)
    proxy = start_proxy(config)
    wait_for_log(proxy, r"watching .* for changes")

    async with aiohttp.ClientSession() as http:
        assert await served_by(http, f"{proxy.url}/x") == "first"
        config["routes"][0]["upstream"] = second.url
        proxy.write_config(config)

        async def switched() -> bool:
            return await served_by(http, f"{proxy.url}/x") == "second"

        await wait_until(switched, timeout=30)
        wait_for_log(proxy, r"config file .* changed; reloading")

        proxy.config_path.write_text("routes: {{{\n")
        wait_for_log(proxy, r"reload refused")
        assert await served_by(http, f"{proxy.url}/x") == "second"

        # Fixing the file is picked up again.
        config["routes"][0]["upstream"] = first.url
        proxy.write_config(config)

        async def switched_back() -> bool:
            return await served_by(http, f"{proxy.url}/x") == "first"

        await wait_until(switched_back, timeout=30)
    assert len([ln for ln in proxy.log_text().splitlines() if "reload refused" in ln]) == 1


async def test_environment_variables_in_the_config_file(echo_factory, monkeypatch):
    echo = echo_factory("env")
    port, admin_port = free_port(), free_port()
    monkeypatch.setenv("CP_TEST_UPSTREAM_PORT", str(echo.port))
    monkeypatch.setenv("CP_TEST_API_TOKEN", "s3cret-from-env")
    monkeypatch.delenv("CP_TEST_UNSET", raising=False)
    proxy = RawConfigProxy(
        {"listen": {"port": port}, "admin": {"port": admin_port}},
        Path(tempfile.mkdtemp(prefix="cp-env-")),
    )
    proxy.raw_text = f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin:
  host: 127.0.0.1
  port: ${{CP_TEST_UNSET:-{admin_port}}}
routes:
  - prefix: /
    upstream: http://127.0.0.1:${{CP_TEST_UPSTREAM_PORT}}
    request_headers:
      set:
        Authorization: Bearer ${{CP_TEST_API_TOKEN}}
        X-Deployment: ${{CP_TEST_UNSET:-staging}}
"""
    try:
        proxy.start()
        wait_for_port(admin_port, 30, proxy.proc)
        async with aiohttp.ClientSession() as http:
            status, body = await get_json(http, f"{proxy.url}/whoami")
            assert status == 200
            assert body["headers"]["Authorization"] == "Bearer s3cret-from-env"
            assert body["headers"]["X-Deployment"] == "staging"
            # The status page lists which headers a route sets, never their (secret) values.
            _, document = await get_json(http, f"{proxy.admin_url}/status.json")
            assert document["routes"][0]["headers_set"] == ["Authorization", "X-Deployment"]
            assert "s3cret" not in str(document)
    finally:
        proxy.stop()


def test_missing_variable_is_a_clear_startup_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CP_TEST_MISSING", raising=False)
    proxy = RawConfigProxy({"listen": {"port": free_port()}}, tmp_path)
    proxy.raw_text = "routes:\n  - prefix: /\n    upstream: http://${CP_TEST_MISSING}/\n"
    proxy.write_config()
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--config", str(proxy.config_path), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "routes[0].upstream" in done.stderr
    assert "environment variable CP_TEST_MISSING is not set" in done.stderr
