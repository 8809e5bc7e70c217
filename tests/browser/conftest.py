"""Fixtures for driving the real IPython 2.x frontend JS in headless Chromium through the proxy.

The frontend is never committed: IPython 2.4.1 is fetched with `pip download` into a cache
directory and unpacked per test session. A small aiohttp static server on loopback serves its
static tree plus our harness page, and the browser reaches both through the proxy (route
`/harness/`), so the page's origin is the proxy, as kernel.js needs. jupyter_server is the
shared session fixture `jupyter` (tests/conftest.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, sync_playwright

from tests.support.servers import JupyterServer, ProxyProcess, proxy_config, start_proxy

from .frontend import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HARNESS_DIR,
    FrontendUnavailable,
    HarnessPage,
    fetch_ipython_static,
)
from .static_site import StaticSite


@pytest.fixture(scope="session")
def ipython_static() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="channels-proxy-ipython-") as tmp:
        yield fetch_ipython_static(Path(tmp))


@pytest.fixture(scope="session")
def harness_site(ipython_static: Path) -> Iterator[StaticSite]:
    site = StaticSite(ipython_static, HARNESS_DIR)
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="session")
def harness_proxy(jupyter: JupyterServer, harness_site: StaticSite) -> Iterator[ProxyProcess]:
    """The proxy with jupyter_server at `/` and the harness site at `/harness/`."""
    routes = [
        {"prefix": "/", "upstream": jupyter.url},
        {"prefix": "/harness/", "upstream": f"{harness_site.url}/"},
    ]
    process = start_proxy(proxy_config(jupyter.url, routes=routes, admin={"enabled": False}))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile (module scope: the sync driver must
    not outlive the browser tests while asyncio tests run)."""
    if not Path(CHROMIUM).exists():
        raise FrontendUnavailable(f"{CHROMIUM} not found: install Debian's chromium package")
    with sync_playwright() as playwright:
        # headless=True makes Playwright pass --headless itself.
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield context
        context.close()


@pytest.fixture
def harness(
    browser_context: BrowserContext, harness_proxy: ProxyProcess, jupyter: JupyterServer
) -> Iterator[HarnessPage]:
    """A fresh harness page with a kernel started by kernel.js."""
    if harness_proxy.proc is None or harness_proxy.proc.poll() is not None:
        harness_proxy.start()  # an earlier test may have left it stopped
    page = HarnessPage(browser_context.new_page(), harness_proxy, jupyter)
    kernel_id: str | None = None
    try:
        page.open()
        kernel_id = page.start_kernel()
        yield page
    finally:
        if kernel_id:
            page.delete_kernel(kernel_id)
        page.page.close()
