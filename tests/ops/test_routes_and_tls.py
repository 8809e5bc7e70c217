"""Per-route header rules, timeouts, error pages and TLS on both hops, end to end."""

from __future__ import annotations

import aiohttp

from tests.ops.support import get_json
from tests.support.servers import free_port, proxy_config


async def test_route_header_rules_reach_the_upstream(start_proxy, echo_factory):
    echo = echo_factory("headers")
    config = proxy_config(echo.url)
    config["routes"] = [
        {
            "prefix": "/api/",
            "upstream": echo.url + "/backend/",
            "request_headers": {
                "set": {"X-Route": "api", "User-Agent": "channels-proxy-test"},
                "remove": ["X-Internal-Secret", "Cookie"],
            },
        },
        {"prefix": "/", "upstream": echo.url},
    ]
    proxy = start_proxy(config)
    sent = {"X-Internal-Secret": "hide me", "Cookie": "a=b", "User-Agent": "client", "X-Kept": "1"}
    async with aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"{proxy.url}/api/things?q=1", headers=sent)
        assert status == 200
        assert body["path"] == "/backend/things?q=1"
        seen = body["headers"]
        assert seen["X-Route"] == "api"
        assert seen["User-Agent"] == "channels-proxy-test"
        assert "X-Internal-Secret" not in seen and "Cookie" not in seen
        assert seen["X-Kept"] == "1"

        # Another route has no rules: the same request arrives as sent.
        _, body = await get_json(http, f"{proxy.url}/other", headers=sent)
        seen = body["headers"]
        assert seen["X-Internal-Secret"] == "hide me" and seen["Cookie"] == "a=b"
        assert "X-Route" not in seen


async def test_response_timeout_gives_504_and_error_pages_replace_502(
    start_proxy, echo_factory, tmp_path
):
    echo = echo_factory("slow")
    page_502 = tmp_path / "502.html"
    page_502.write_text("<h1>The notebook server is down</h1>")
    page_504 = tmp_path / "504.html"
    page_504.write_text("<h1>The notebook server is slow</h1>")
    dead = f"http://127.0.0.1:{free_port()}"
    config = proxy_config(echo.url)
    config["routes"] = [
        {
            "prefix": "/slow-json/",
            "upstream": echo.url,
            "timeouts": {"connect": 0.5, "response": 0.5},
        },
        {
            "prefix": "/slow-page/",
            "upstream": echo.url,
            "timeouts": {"connect": 0.5, "response": 0.5},
            "error_pages": {504: str(page_504)},
        },
        {"prefix": "/down/", "upstream": dead, "error_pages": {502: str(page_502)}},
        {"prefix": "/down-json/", "upstream": dead},
        {"prefix": "/", "upstream": echo.url},
    ]
    proxy = start_proxy(config)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.url}/slow-json/slow") as response:
            assert response.status == 504
            body = await response.json()
            assert body["route"] == "/slow-json/" and body["status"] == 504
        async with http.get(f"{proxy.url}/slow-page/slow") as response:
            assert response.status == 504
            assert response.content_type == "text/html"
            assert await response.text() == page_504.read_text()
        # Not every request on a route with a response timeout is cut.
        _, body = await get_json(http, f"{proxy.url}/slow-json/fast")
        assert body["path"] == "/fast"

        async with http.get(f"{proxy.url}/down/anything") as response:
            assert response.status == 502
            assert response.content_type == "text/html"
            assert await response.text() == page_502.read_text()
        async with http.get(f"{proxy.url}/down-json/anything") as response:
            assert response.status == 502
            assert (await response.json())["route"] == "/down-json/"


async def test_tls_listener_and_https_upstreams(start_proxy, echo_factory, certificates):
    trusted = echo_factory("trusted", ssl_context=certificates.server_context())
    lone = echo_factory("self-signed", ssl_context=certificates.server_context(self_signed=True))
    config = proxy_config(trusted.url)
    config["listen"]["tls"] = {
        "cert": str(certificates.server_cert),
        "key": str(certificates.server_key),
    }
    config["routes"] = [
        {
            "prefix": "/ca/",
            "upstream": trusted.url,
            "tls": {"ca_bundle": str(certificates.ca_cert)},
        },
        {"prefix": "/noverify/", "upstream": lone.url, "tls": {"verify": False}},
        {
            "prefix": "/strict/",
            "upstream": lone.url,
            "tls": {"ca_bundle": str(certificates.ca_cert)},
        },
    ]
    proxy = start_proxy(config)
    base = f"https://127.0.0.1:{proxy.port}"
    connector = aiohttp.TCPConnector(ssl=certificates.client_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        status, body = await get_json(http, f"{base}/ca/x")
        assert (status, body["server"]) == (200, "trusted")
        assert body["headers"]["X-Forwarded-Proto"] == "https"
        status, body = await get_json(http, f"{base}/noverify/x")
        assert (status, body["server"]) == (200, "self-signed")
        # Verification is on unless turned off: a certificate the CA did not sign is refused.
        async with http.get(f"{base}/strict/x") as response:
            assert response.status == 502
            assert "certificate" in (await response.json())["error"].lower()
        # wss to the upstream through a wss listener.
        async with http.ws_connect(f"wss://127.0.0.1:{proxy.port}/ca/ws") as ws:
            await ws.send_str("hello")
            msg = await ws.receive(timeout=30)
            assert msg.data == "trusted:hello"

    # Plain HTTP is not served on a TLS listener.
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"http://127.0.0.1:{proxy.port}/ca/x") as response:
                assert response.status == 400
        except aiohttp.ClientError:
            pass
