"""The default config: `python -m proxy` starts its own jupyter_server and cleans it up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.test_cli import RunningProxy, run_cli
from tests.support.servers import REPO, free_port

BANNER = r"open (http://127\.0\.0\.1:(\d+)/)\?token=([0-9a-f]{32,}) \(embedded jupyter_server"


def request(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"token {token}"} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding a copy of the shipped default config."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "proxy.yaml", tmp_path / "config" / "proxy.yaml")
    # Keep the user's Jupyter config and data out of the embedded server.
    for name in ("CONFIG", "DATA"):
        path = tmp_path / f"jupyter-{name.lower()}"
        path.mkdir()
        monkeypatch.setenv(f"JUPYTER_{name}_DIR", str(path))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("JUPYTER_TOKEN", raising=False)
    return tmp_path


def start_default_proxy(workdir: Path) -> tuple[RunningProxy, str, str]:
    """Run the proxy with the default config; returns it, its base URL and the token."""
    port = free_port()
    proxy = RunningProxy("--port", str(port), "--admin-port", "0", cwd=workdir)
    try:
        banner = proxy.wait_for_line(BANNER)
    except BaseException:
        proxy.stop(signal.SIGKILL)
        raise
    base, banner_port, token = banner.groups()
    assert int(banner_port) == port
    return proxy, base, token


def jupyter_processes(proxy: RunningProxy, kernels: int) -> list[psutil.Process]:
    """The proxy's jupyter_server child and its kernels."""
    children = psutil.Process(proxy.proc.pid).children(recursive=True)
    servers = [p for p in children if "jupyter_server" in p.cmdline()]
    assert len(servers) == 1, children
    assert len(children) == 1 + kernels, [p.cmdline() for p in children]
    return children


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_default_config_serves_embedded_jupyter_and_stops_it(
    workdir: Path, stop_signal: int
) -> None:
    proxy, base, token = start_default_proxy(workdir)
    try:
        status, body = request(f"{base}api/status?token={token}")
        assert status == 200
        assert "started" in json.loads(body)
        assert request(f"{base}api/status")[0] == 403  # the token is what lets a user in
        status, body = request(f"{base}api/kernels", "POST", token)
        assert status == 201, body
        started = jupyter_processes(proxy, kernels=1)
    finally:
        code = proxy.stop(stop_signal)
    assert code == 0, proxy.output()
    _gone, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]
    assert "embedded jupyter_server stopped" in proxy.output()


def test_embedded_server_logs_stay_out_of_the_terminal(workdir: Path) -> None:
    proxy, base, token = start_default_proxy(workdir)
    try:
        assert request(f"{base}api/status", token=token)[0] == 200
    finally:
        proxy.stop(signal.SIGTERM)
    output = proxy.output()
    assert "ServerApp]" not in output and "jupyter_server: " not in output
    # The token is printed once, in the line that tells the user what to open.
    assert [line for line in proxy.lines if token in line] == [
        line for line in proxy.lines if "open http" in line
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_killed_proxy_leaves_no_jupyter_server_behind(workdir: Path) -> None:
    proxy, base, token = start_default_proxy(workdir)
    try:
        assert request(f"{base}api/kernels", "POST", token)[0] == 201
        started = jupyter_processes(proxy, kernels=1)
    finally:
        proxy.stop(signal.SIGKILL)
    _gone, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]


def test_jupyter_server_that_cannot_start_is_a_clear_error(workdir: Path) -> None:
    # Stands in for a broken install: a `jupyter_server` that dies on start, found first.
    shadow = workdir / "shadow" / "jupyter_server"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text(
        "import sys\nprint('ImportError: libzmq.so.5 not found', flush=True)\nsys.exit(3)\n"
    )
    result = run_cli(
        "--port",
        "0",
        "--admin-port",
        "0",
        cwd=workdir,
        env={"PYTHONPATH": f"{shadow.parent}{os.pathsep}{REPO}"},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "channels-proxy: error: config/proxy.yaml: routes[0].upstream: jupyter_server exited "
        "with code 3 while starting: ImportError: libzmq.so.5 not found"
    )
