"""Processes the browser tests run against: jupyter_server, the proxy, the harness's static site."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


class FixtureError(RuntimeError):
    """A process or download the browser tests need did not come up; carries its log."""


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ok(url: str, process: subprocess.Popen[bytes], log: Path, **kw: Any) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FixtureError(f"{process.args!r} exited with {process.returncode}:\n{tail(log)}")
        if http_ok(url, **kw):
            return
        time.sleep(0.1)
    raise FixtureError(f"{url} not ready after {STARTUP_TIMEOUT}s:\n{tail(log)}")


def tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- servers ------------------------------------------------------------------------------


class StaticSite:
    """aiohttp static server on loopback, in its own thread: IPython's tree plus the harness."""

    def __init__(self, ipython_static: Path, harness_dir: Path) -> None:
        self._app = web.Application()
        self._app.router.add_static("/ipython/", ipython_static)
        self._app.router.add_static("/", harness_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(self._app, access_log=None)
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)

    async def _serve(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


@dataclass
class JupyterServer:
    """A real jupyter_server + ipykernel on loopback, token-authenticated."""

    root: Path
    port: int = field(default_factory=free_loopback_port)
    token: str = field(default_factory=lambda: os.urandom(16).hex())
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "jupyter_server.log"

    def start(self) -> None:
        notebooks = self.root / "notebooks"
        notebooks.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            env[name] = str(self.root / name.lower())
        command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root"]
        command += [
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={notebooks}",
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        headers = {"Authorization": f"token {self.token}"}
        wait_until_ok(f"{self.url}/api/status", self.process, self.log, headers=headers)

    def delete_kernel(self, kernel_id: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/kernels/{kernel_id}",
            method="DELETE",
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass  # already gone

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class ProxyProcess:
    """The proxy as users run it (`python -m proxy --config`), restartable on the same port."""

    config: Path
    port: int
    log: Path
    readiness_url: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "proxy", "--config", str(self.config)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)
        wait_until_ok(self.readiness_url, self.process, self.log)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            self.process.wait(timeout=10)
            raise FixtureError(f"proxy ignored SIGTERM for {timeout}s:\n{tail(self.log)}") from exc

    def stop(self) -> None:
        if self.running():
            try:
                self.terminate()
            except FixtureError:
                pass


def write_proxy_config(path: Path, port: int, jupyter_url: str, static_url: str) -> None:
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"enabled": False},
        "routes": [
            {"prefix": "/", "upstream": jupyter_url},
            {"prefix": "/harness/", "upstream": static_url + "/"},
        ],
    }
    # JSON is YAML, and needs no dependency beyond the standard library here.
    path.write_text(json.dumps(config, indent=2))
