"""XSRF vouching: same-origin cookie-authenticated writes pass, cross-site ones stay refused."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie

import aiohttp
import pytest
from multidict import CIMultiDict

from proxy.xsrf import cookie_value, is_same_origin, vouch_for_xsrf
from tests.support.servers import JupyterServer, ProxyProcess, proxy_config

# The pure rule


SAME = {"Host": "notebook.test:8890", "Origin": "http://notebook.test:8890"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_are_left_alone(method: str) -> None:
    assert vouch_for_xsrf(method, CIMultiDict(SAME), "http") is None


@pytest.mark.parametrize("method", ["POST", "put", "PATCH", "DELETE"])
def test_same_origin_write_gets_a_matching_pair(method: str) -> None:
    headers = CIMultiDict(SAME, Cookie="username-notebook-test-8890=abc; theme=dark")
    changes = vouch_for_xsrf(method, headers, "http")
    assert changes is not None
    token = changes["X-XSRFToken"]
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    assert changes["Cookie"] == f"username-notebook-test-8890=abc; theme=dark; _xsrf={token}"
    assert vouch_for_xsrf(method, headers, "http")["X-XSRFToken"] != token  # type: ignore[index]


def test_clients_own_xsrf_cookie_is_echoed_not_replaced() -> None:
    own = "2|0a1b2c3d|11223344|1700000000"
    headers = CIMultiDict(SAME, Cookie=f"a=1; _xsrf={own}")
    assert vouch_for_xsrf("POST", headers, "http") == {"X-XSRFToken": own}


def test_unusable_xsrf_cookie_is_replaced() -> None:
    headers = CIMultiDict(SAME, Cookie="_xsrf=2|zz|not-hex|x; a=1")
    changes = vouch_for_xsrf("POST", headers, "http")
    assert changes is not None
    assert changes["Cookie"] == f"a=1; _xsrf={changes['X-XSRFToken']}"


def test_client_supplied_token_is_respected() -> None:
    for header in ("X-XSRFToken", "X-CSRFToken"):
        headers = CIMultiDict(SAME, **{header: "mine"})
        assert vouch_for_xsrf("POST", headers, "http") is None


@pytest.mark.parametrize(
    ("headers", "scheme", "same"),
    [
        ({"Host": "nb.test", "Origin": "http://nb.test"}, "http", True),
        ({"Host": "nb.test", "Origin": "http://NB.test:80"}, "http", True),
        ({"Host": "nb.test:443", "Origin": "https://nb.test"}, "https", True),
        ({"Host": "nb.test", "Referer": "http://nb.test/notebooks/a.ipynb"}, "http", True),
        ({"Host": "nb.test", "Origin": "https://nb.test"}, "http", False),
        ({"Host": "nb.test", "Origin": "http://nb.test:8080"}, "http", False),
        ({"Host": "nb.test", "Origin": "http://evil.test"}, "http", False),
        ({"Host": "nb.test", "Origin": "null"}, "http", False),
        ({"Host": "nb.test", "Origin": "null", "Referer": "http://nb.test/"}, "http", False),
        ({"Host": "nb.test", "Referer": "http://evil.test/nb.test"}, "http", False),
        ({"Host": "nb.test"}, "http", False),
        ({"Origin": "http://nb.test"}, "http", False),
        (
            {"Host": "nb.test", "Origin": "http://evil.test", "X-Forwarded-Host": "evil.test"},
            "http",
            False,
        ),
        ({"Host": "nb.test", "Origin": "http://nb.test:99999"}, "http", False),
    ],
)
def test_same_origin_proof(headers: dict[str, str], scheme: str, same: bool) -> None:
    assert is_same_origin(CIMultiDict(headers), scheme) is same
    changes = vouch_for_xsrf("POST", CIMultiDict(headers), scheme)
    assert (changes is not None) is same


def test_cookie_value_reads_like_tornado() -> None:
    assert cookie_value("a=1; _xsrf=first; b=2; _xsrf=last", "_xsrf") == "last"
    assert cookie_value("a=1", "_xsrf") is None
    assert cookie_value("", "_xsrf") is None


# Against a real jupyter_server through the real proxy


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def login_cookie(http: aiohttp.ClientSession, proxy: ProxyProcess, token: str) -> str:
    """Log in through the proxy with the token; return the Cookie header a browser would send."""
    async with http.get(f"{proxy.url}/api/status?token={token}") as resp:
        assert resp.status == 200
        jar: SimpleCookie = SimpleCookie()
        for header in resp.headers.getall("Set-Cookie", ()):
            jar.load(header)
    name = f"username-127-0-0-1-{proxy.port}"  # named after the Host the browser used
    assert name in jar, list(jar)
    return f"{name}={jar[name].value}"


async def kernel_ids(http: aiohttp.ClientSession, jupyter: JupyterServer) -> set[str]:
    async with http.get(f"{jupyter.url}/api/kernels", headers=jupyter.auth_headers) as resp:
        assert resp.status == 200
        return {kernel["id"] for kernel in await resp.json()}


@pytest.fixture
async def cleanup_kernels(
    http: aiohttp.ClientSession, jupyter: JupyterServer
) -> AsyncIterator[None]:
    before = await kernel_ids(http, jupyter)
    yield
    for kernel in await kernel_ids(http, jupyter) - before:
        await jupyter.delete_kernel(kernel)


async def test_same_origin_cookie_writes_succeed(
    jupyter: JupyterServer,
    proxy: ProxyProcess,
    http: aiohttp.ClientSession,
    cleanup_kernels: None,
) -> None:
    cookie = await login_cookie(http, proxy, jupyter.token)
    same_origin = {"Cookie": cookie, "Origin": proxy.url}

    async with http.post(f"{proxy.url}/api/kernels", headers=same_origin, json={}) as resp:
        assert resp.status == 201, await resp.text()
        kernel = (await resp.json())["id"]
    async with http.post(
        f"{proxy.url}/api/kernels/{kernel}/interrupt", headers=same_origin
    ) as resp:
        assert resp.status == 204, await resp.text()
    async with http.post(f"{proxy.url}/api/kernels/{kernel}/restart", headers=same_origin) as resp:
        assert resp.status == 200, await resp.text()

    # IPython 2.x sends Referer but (being same-origin XHR in old browsers) may lack Origin.
    by_referer = {"Cookie": cookie, "Referer": f"{proxy.url}/notebooks/Untitled0.ipynb"}
    async with http.post(f"{proxy.url}/api/kernels", headers=by_referer, json={}) as resp:
        assert resp.status == 201, await resp.text()
        second = (await resp.json())["id"]

    # A browser that already holds jupyter's _xsrf cookie keeps it.
    own_xsrf = {**same_origin, "Cookie": f"{cookie}; _xsrf=00112233445566778899aabbccddeeff"}
    for kernel_id in (kernel, second):
        async with http.delete(f"{proxy.url}/api/kernels/{kernel_id}", headers=own_xsrf) as resp:
            assert resp.status == 204, await resp.text()
    assert not {kernel, second} & await kernel_ids(http, jupyter)


@pytest.mark.parametrize(
    "extra",
    [
        {"Origin": "http://evil.test"},
        {"Origin": "http://evil.test", "X-Forwarded-Host": "evil.test"},
        {"Origin": "null"},
        {"Referer": "http://evil.test/page"},
        {},
    ],
    ids=["foreign-origin", "forged-forwarded-host", "null-origin", "foreign-referer", "none"],
)
async def test_cross_site_cookie_writes_stay_refused(
    jupyter: JupyterServer,
    proxy: ProxyProcess,
    http: aiohttp.ClientSession,
    cleanup_kernels: None,
    extra: dict[str, str],
) -> None:
    cookie = await login_cookie(http, proxy, jupyter.token)
    before = await kernel_ids(http, jupyter)
    headers = {"Cookie": cookie, **extra}
    async with http.post(f"{proxy.url}/api/kernels", headers=headers, json={}) as resp:
        # jupyter_server answers 404 when Origin mismatches Host, 403 when the token is missing.
        assert resp.status in (403, 404), await resp.text()
    assert await kernel_ids(http, jupyter) == before


async def test_without_vouching_upstream_refuses_same_origin_cookie_writes(
    jupyter: JupyterServer,
    proxy_factory: Callable[..., ProxyProcess],
    http: aiohttp.ClientSession,
    cleanup_kernels: None,
) -> None:
    config = proxy_config(jupyter.url)
    config["routes"][0]["xsrf_vouch"] = False
    proxy = proxy_factory(config)
    cookie = await login_cookie(http, proxy, jupyter.token)
    headers = {"Cookie": cookie, "Origin": proxy.url}
    async with http.post(f"{proxy.url}/api/kernels", headers=headers, json={}) as resp:
        assert resp.status == 403
        assert "_xsrf" in await resp.text()


async def test_token_requests_are_unaffected(
    jupyter: JupyterServer,
    proxy: ProxyProcess,
    http: aiohttp.ClientSession,
    cleanup_kernels: None,
) -> None:
    headers = {**jupyter.auth_headers, "Origin": proxy.url}
    async with http.post(f"{proxy.url}/api/kernels", headers=headers, json={}) as resp:
        assert resp.status == 201
        kernel = (await resp.json())["id"]
    async with http.delete(f"{proxy.url}/api/kernels/{kernel}", headers=headers) as resp:
        assert resp.status == 204


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-front-proxy", "untrusted-peer"])
async def test_https_page_behind_a_tls_terminating_front_proxy(
    jupyter: JupyterServer,
    proxy_factory: Callable[..., ProxyProcess],
    http: aiohttp.ClientSession,
    cleanup_kernels: None,
    trusted: bool,
) -> None:
    # The browser's page is https://host; a front proxy terminated TLS and says so.
    config = proxy_config(jupyter.url, trusted_proxies=["127.0.0.1/32"] if trusted else [])
    proxy = proxy_factory(config)
    cookie = await login_cookie(http, proxy, jupyter.token)
    before = await kernel_ids(http, jupyter)
    headers = {
        "Cookie": cookie,
        "Origin": f"https://127.0.0.1:{proxy.port}",
        "X-Forwarded-Proto": "https",
    }
    async with http.post(f"{proxy.url}/api/kernels", headers=headers, json={}) as resp:
        if trusted:
            assert resp.status == 201, await resp.text()
        else:
            # From an untrusted peer the claim is ignored: an https Origin on an http
            # connection proves nothing, so the upstream's XSRF check still refuses.
            assert resp.status in (403, 404), await resp.text()
            assert await kernel_ids(http, jupyter) == before
