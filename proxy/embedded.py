"""The embedded upstream: a local jupyter_server + ipykernel the proxy starts and stops itself.

It runs as a child process in its own process group on a free loopback port with a fresh
token. Its output goes to the `proxy.embedded` logger at debug level. It cannot outlive the
proxy: stop() on a normal exit, an atexit hook for exits that skip it, and on Linux the
kernel's parent-death signal for a proxy that is killed outright.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import importlib.util
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import aiohttp

from .config import ProxyConfig

log = logging.getLogger("proxy.embedded")

REQUIRED_PACKAGES = ("jupyter_server", "ipykernel")
_PORT_ATTEMPTS = 3  # another process may take the port between probing and binding
_TAIL_LINES = 20


class EmbeddedServerError(Exception):
    """The embedded jupyter_server could not be started; the message says why."""


class EmbeddedJupyter:
    """A jupyter_server child process on 127.0.0.1 with a token only the proxy knows."""

    def __init__(
        self,
        root_dir: str | None = None,
        base_url: str = "/",
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        allow_remote_access: bool = False,
    ) -> None:
        self.root_dir = os.path.abspath(root_dir or os.getcwd())
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        # jupyter_server refuses non-local Host headers unless told otherwise, and the proxy
        # passes the client's Host through: a proxy listening on a public address needs this.
        self.allow_remote_access = allow_remote_access
        self.token = secrets.token_hex(24)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None
        self._output_tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._reader: threading.Thread | None = None

    @classmethod
    def for_config(cls, config: ProxyConfig) -> EmbeddedJupyter:
        """The embedded server a config asks for, served under its route's prefix."""
        prefixes = [route.prefix for route in config.routes if route.upstream == "embedded"]
        # Under its own prefix the server's pages link to the right place; one server shared
        # by several prefixes can only be right for one of them, so it keeps "/".
        base_url = prefixes[0] if len(prefixes) == 1 else "/"
        return cls(base_url=base_url, allow_remote_access=not _is_loopback(config.listen.host))

    @property
    def url(self) -> str:
        """The server's base URL (loopback)."""
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start jupyter_server and return once it answers GET /api/status."""
        missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise EmbeddedServerError(
                f"'embedded' needs {' and '.join(missing)} installed in "
                f"{sys.executable} (pip install jupyter_server ipykernel), "
                "or give the route a real upstream URL"
            )
        self._workdir = tempfile.mkdtemp(prefix="channels-proxy-jupyter-")
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = _free_loopback_port()
            self._spawn()
            try:
                await self._wait_until_ready()
            except _ExitedEarly as exc:
                await asyncio.to_thread(self._reap)
                if attempt < _PORT_ATTEMPTS and _looks_like_port_taken(self._output_tail):
                    log.debug("port %d was taken, retrying", self.port)
                    continue
                self._remove_workdir()
                raise EmbeddedServerError(
                    f"jupyter_server exited with code {exc.code} while starting: "
                    f"{self._describe_output()}"
                ) from None
            except BaseException:
                await self.stop()
                raise
            log.info("embedded jupyter_server ready at %s (pid %d)", self.url, self.pid)
            return

    async def stop(self) -> None:
        """Ask jupyter_server to shut down (it stops its kernels), kill it if it does not."""
        if self._process is not None:
            await asyncio.to_thread(self._terminate)
        self._remove_workdir()

    # -- process ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--ServerApp.base_url={self.base_url}",
            # Notebook outputs can be large; the proxy enforces its own message limits.
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
        ]
        if self.allow_remote_access:
            args.append("--ServerApp.allow_remote_access=True")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--allow-root")
        return args

    def _environment(self) -> dict[str, str]:
        assert self._workdir is not None
        env = dict(os.environ)
        # The token travels in the environment so it never shows up in `ps`.
        env["JUPYTER_TOKEN"] = self.token
        env.pop("JUPYTER_TOKEN_FILE", None)
        env["JUPYTER_RUNTIME_DIR"] = os.path.join(self._workdir, "runtime")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self) -> None:
        self._output_tail.clear()
        log.debug("starting %s", " ".join(self._command()))
        self._process = subprocess.Popen(
            self._command(),
            cwd=self.root_dir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C in the terminal reaches only the proxy, which
            # then stops the server in order (sessions drained first).
            process_group=0,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        _live_processes.add(self._process)
        self._reader = threading.Thread(
            target=self._relay_output,
            args=(self._process,),
            name=f"jupyter-server-log-{self._process.pid}",
            daemon=True,
        )
        self._reader.start()

    def _relay_output(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._output_tail.append(line)
            log.debug("jupyter_server: %s", line)
        process.stdout.close()

    async def _wait_until_ready(self) -> None:
        assert self._process is not None
        status_url = f"http://127.0.0.1:{self.port}{self.base_url}api/status"
        headers = {"Authorization": f"token {self.token}"}
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise _ExitedEarly(code)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with client.get(status_url, headers=headers) as response:
                        if response.status == 200:
                            return
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"jupyter_server did not answer on {status_url} within "
                        f"{self.startup_timeout:g} s: {self._describe_output()}"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _terminate(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "jupyter_server (pid %d) did not stop within %g s; killing it",
                    process.pid,
                    self.stop_timeout,
                )
                _kill_group(process)
        self._reap()
        log.info("embedded jupyter_server stopped (exit code %s)", process.returncode)

    def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        process.wait()
        if self._reader is not None:
            self._reader.join(timeout=self.stop_timeout)
        _live_processes.discard(process)

    def _remove_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _describe_output(self) -> str:
        lines = [line for line in self._output_tail if line.strip()]
        return " | ".join(lines[-5:]) if lines else "no output"


class _ExitedEarly(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _looks_like_port_taken(output: collections.deque[str]) -> bool:
    return any("already in use" in line or "not available" in line for line in output)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and whatever shares its process group.

    Only while the server is unreaped: its pid (the group id) cannot have been reused then.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the proxy dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # The proxy may have died between fork and prctl.
    if os.getppid() == 1:
        os._exit(1)


_live_processes: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort for exits that skipped stop(): no jupyter_server outlives the proxy."""
    for process in list(_live_processes):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_group(process)
