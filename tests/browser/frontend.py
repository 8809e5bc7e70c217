"""The frontend under test (IPython 2.4.1's static tree) and the page that drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Response
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.servers import JupyterServer, ProxyProcess

IPYTHON_VERSION = "2.4.1"
HARNESS_DIR = Path(__file__).parent / "harness"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Playwright's headless=True adds --headless itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class FrontendUnavailable(RuntimeError):
    """The IPython wheel or the browser could not be had; says how to get it."""


def ipython_wheel_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "channels-proxy" / f"ipython-{IPYTHON_VERSION}"


def fetch_ipython_static(dest: Path) -> Path:
    """Download (once, cached) the IPython wheel and unpack its notebook static tree."""
    cache = ipython_wheel_cache()
    wheels = sorted(cache.glob(f"ipython-{IPYTHON_VERSION}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        command += [f"ipython=={IPYTHON_VERSION}", "-d", str(cache)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        wheels = sorted(cache.glob(f"ipython-{IPYTHON_VERSION}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise FrontendUnavailable(
                f"pip download ipython=={IPYTHON_VERSION} failed:\n{done.stderr}"
            )
    prefix = "IPython/html/static/"
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [name for name in wheel.namelist() if name.startswith(prefix)]
        wheel.extractall(dest, members)
    return dest / prefix


class HarnessPage:
    """The harness page in Chromium: kernel.js driven through window.harness, read back."""

    def __init__(self, page: Page, proxy: ProxyProcess, jupyter: JupyterServer) -> None:
        self.page = page
        self.proxy = proxy
        self.jupyter = jupyter
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.http_errors: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("response", self._note_http_error)

    def _note_http_error(self, response: Response) -> None:
        if response.status >= 400:
            self.http_errors.append(f"{response.request.method} {response.url} {response.status}")

    def open(self) -> None:
        """Log in through the proxy (jupyter_server sets its cookie), then load the harness."""
        self.page.goto(f"{self.proxy.url}/api/status?token={self.jupyter.token}")
        self.page.goto(f"{self.proxy.url}/harness/index.html")
        self.wait_for("() => harness.ready || harness.load_error !== null", "frontend modules")
        assert self.evaluate("harness.load_error") is None, self.diagnostics()
        assert self.page_errors == [], self.diagnostics()

    def start_kernel(self) -> str:
        """kernel.start(): POST /api/kernels, then the three websockets."""
        self.evaluate("harness.start()")
        self.wait_for("() => harness.started_count() >= 1", "kernel.js status_started")
        return str(self.evaluate("results.kernel_id"))

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait_for(self, predicate: str, what: str, arg: Any = None, timeout: float = 30) -> None:
        """Wait for a JS predicate; on timeout fail with everything the browser saw."""
        try:
            self.page.wait_for_function(predicate, arg=arg, timeout=timeout * 1000, polling=50)
        except PlaywrightTimeoutError:
            raise AssertionError(f"no {what} within {timeout}s\n{self.diagnostics()}") from None

    def execute(self, code: str, timeout: float = 30, **options: Any) -> dict[str, Any]:
        """kernel.execute() as a notebook cell does; returns what its callbacks received."""
        msg_id = self.send_execute(code, **options)
        return self.wait_finished(msg_id, f"reply and idle for {code!r}", timeout)

    def send_execute(self, code: str, **options: Any) -> str:
        return str(self.evaluate("([code, opts]) => harness.execute(code, opts)", [code, options]))

    def wait_finished(self, msg_id: str, what: str, timeout: float = 30) -> dict[str, Any]:
        self.wait_for("id => harness.finished(id)", what, arg=msg_id, timeout=timeout)
        return self.record(msg_id)

    def record(self, msg_id: str) -> dict[str, Any]:
        return dict(self.evaluate("id => results.requests[id]", msg_id))

    def delete_kernel(self, kernel_id: str) -> None:
        """Shut the kernel down on jupyter_server directly (the test is over)."""
        request = urllib.request.Request(
            f"{self.jupyter.url}/api/kernels/{kernel_id}",
            method="DELETE",
            headers=self.jupyter.auth_headers,
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass  # already gone

    def diagnostics(self) -> str:
        try:
            seen = self.evaluate(
                "() => ({events: results.events, sockets: results.sockets.slice(-9)})"
            )
        except PlaywrightError as exc:
            seen = f"(page unavailable: {exc})"
        return "\n".join(
            [
                "--- kernel.js events and websockets (t in ms since epoch):",
                json.dumps(seen, indent=1, default=str)[:6000],
                "--- console:",
                *self.console[-40:],
                "--- page errors:",
                *self.page_errors,
                "--- HTTP errors:",
                *self.http_errors[-20:],
                "--- proxy log:",
                *self.proxy.log_text().splitlines()[-40:],
            ]
        )
