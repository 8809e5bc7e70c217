"""Fixtures for driving the real IPython 2.x frontend JS in headless Chromium through the proxy.

The frontend is never committed: IPython 2.4.1 is fetched with `pip download` into a cache
directory and unpacked per test session. A small aiohttp static server on loopback serves its
static tree plus our harness page, and the browser reaches both through the proxy (route
`/harness/`), so the page's origin is the proxy, as kernel.js needs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, sync_playwright

from .frontend import CHROMIUM, CHROMIUM_ARGS, HARNESS_DIR, HarnessPage, fetch_ipython_static
from .servers import (
    FixtureError,
    JupyterServer,
    ProxyProcess,
    StaticSite,
    free_loopback_port,
    write_proxy_config,
)


@pytest.fixture(scope="session")
def browser_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="channels-proxy-browser-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def ipython_static(browser_workdir: Path) -> Path:
    return fetch_ipython_static(browser_workdir / "ipython")


@pytest.fixture(scope="session")
def harness_site(ipython_static: Path) -> Iterator[StaticSite]:
    site = StaticSite(ipython_static, HARNESS_DIR)
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="session")
def jupyter(browser_workdir: Path) -> Iterator[JupyterServer]:
    server = JupyterServer(browser_workdir / "jupyter")
    server.root.mkdir()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy(
    browser_workdir: Path, jupyter: JupyterServer, harness_site: StaticSite
) -> Iterator[ProxyProcess]:
    port = free_loopback_port()
    config = browser_workdir / "proxy.yaml"
    write_proxy_config(config, port, jupyter.url, f"http://127.0.0.1:{harness_site.port}")
    process = ProxyProcess(
        config=config,
        port=port,
        log=browser_workdir / "proxy.log",
        readiness_url=f"http://127.0.0.1:{port}/harness/index.html",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not Path(CHROMIUM).exists():
        raise FixtureError(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
        )
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
    browser_context: BrowserContext, proxy: ProxyProcess, jupyter: JupyterServer
) -> Iterator[HarnessPage]:
    """A fresh harness page with a kernel started by kernel.js."""
    if not proxy.running():
        proxy.start()  # an earlier test may have left it stopped
    page = HarnessPage(browser_context.new_page(), proxy, jupyter)
    kernel_id: str | None = None
    try:
        page.open()
        kernel_id = page.start_kernel()
        yield page
    finally:
        if kernel_id:
            jupyter.delete_kernel(kernel_id)
        page.page.close()
