"""Real processes for tests: a jupyter_server with ipykernel, and the proxy itself."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None):
    """Block until something accepts connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def _spawn_listening(
    args: list[str],
    log_path: Path,
    env: dict[str, str],
    cwd: Path,
    port: int,
    timeout: float = 60.0,
) -> subprocess.Popen[bytes] | None:
    """Start a process logging to `log_path`; None (and the process stopped) if it never listens."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_for_port(port, timeout, proc)
    except (RuntimeError, TimeoutError):
        stop_process(proc)
        return None
    return proc


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Signal a process and wait for it (bounded); kill it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _jupyter_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RUNTIME", "DATA", "CONFIG"):
        path = base / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[f"JUPYTER_{name}_DIR"] = str(path)
    env["IPYTHONDIR"] = str(base / "ipython")
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env.pop("JUPYTER_TOKEN", None)
    return env


@dataclass
class JupyterServer:
    """A real jupyter_server + ipykernel on loopback with token auth."""

    port: int
    token: str
    base: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.base / "jupyter_server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def start(self, timeout: float = 60.0) -> JupyterServer:
        root = self.base / "root"
        root.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
            "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
            "--ServerApp.shutdown_no_activity_timeout=0",
            *self.extra_args,
        ]
        self.proc = _spawn_listening(
            args, self.log_path, _jupyter_env(self.base), root, self.port, timeout
        )
        if self.proc is None:
            raise RuntimeError(f"jupyter_server did not start:\n{self.log_tail()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        """SIGKILL the server (its kernels die with their parent's pipes soon after)."""
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def create_kernel(self, session: aiohttp.ClientSession | None = None) -> str:
        async with _maybe_session(session) as http:
            async with http.post(
                f"{self.url}/api/kernels", json={"name": "python3"}, headers=self.auth_headers
            ) as resp:
                assert resp.status == 201, await resp.text()
                return str((await resp.json())["id"])

    async def delete_kernel(self, kernel_id: str) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.delete(
                f"{self.url}/api/kernels/{kernel_id}", headers=self.auth_headers
            ) as resp:
                await resp.read()


@contextlib.asynccontextmanager
async def _maybe_session(session: aiohttp.ClientSession | None):  # type: ignore[no-untyped-def]
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as own:
        yield own


def start_jupyter_server(
    extra_args: tuple[str, ...] = (), port: int | None = None
) -> JupyterServer:
    base = Path(tempfile.mkdtemp(prefix="cp-jupyter-"))
    server = JupyterServer(port or free_port(), secrets.token_hex(16), base, extra_args)
    return server.start()


def proxy_config(upstream: str, **overrides: Any) -> dict[str, Any]:
    """A proxy config dict for tests: free ports, admin on, one route `/` -> upstream."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "routes": [{"prefix": "/", "upstream": upstream}],
        "logging": {"level": "info"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@dataclass
class ProxyProcess:
    """channels-proxy running as a real subprocess (`python -m proxy --config FILE`)."""

    config: dict[str, Any]
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config['admin']['port']}"

    @property
    def config_path(self) -> Path:
        return self.base / "proxy.yaml"

    @property
    def log_path(self) -> Path:
        return self.base / "proxy.log"

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        self.write_config()
        args = [sys.executable, "-m", "proxy", "--config", str(self.config_path), *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = _spawn_listening(args, self.log_path, env, REPO, self.port, timeout)
        if self.proc is None:
            raise RuntimeError(f"proxy did not start:\n{self.log_text()}")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        stop_process(self.proc, sig, timeout)
        return self.proc.returncode if self.proc is not None else None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


def start_proxy(config: dict[str, Any], extra_args: tuple[str, ...] = ()) -> ProxyProcess:
    base = Path(tempfile.mkdtemp(prefix="cp-proxy-"))
    return ProxyProcess(config, base, extra_args=extra_args).start()
