"""The `channels-proxy` command as a user runs it: `python -m proxy` in a subprocess."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.logs import log_event, setup_logging
from tests.support.servers import REPO, JupyterServer, free_port

PROG_ERROR = "channels-proxy: error: "
GOOD_CONFIG = """\
listen: {host: 127.0.0.1, port: 8890}
routes:
  - prefix: /
    upstream: http://127.0.0.1:8888
"""


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None):
    """Run `python -m proxy ARGS` to completion (bounded) and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


class RunningProxy:
    """`python -m proxy ARGS` running in the background, its stderr collected line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """The first stderr line matching `pattern`; fails if the proxy exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in:\n{self.output()}")
                self._changed.wait(min(remaining, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"proxy ignored signal {sig}:\n{self.output()}") from None
        self._reader.join(5)
        return code

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"token {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


# Log formats


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_log_event_fields_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    log = logging.getLogger("proxy.legacy")
    log_event(log, "info", "session close", kernel="k-1", reason="client gone", sent=3)
    log_event(log, "debug", "not shown at info")
    line = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO proxy\.legacy: session close "
        r'kernel=k-1 reason="client gone" sent=3\n',
        line,
    )


@pytest.mark.usefixtures("restore_root_logger")
def test_log_event_fields_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "json")
    log = logging.getLogger("proxy.legacy")
    log_event(log, "warning", "session open", kernel="k-1", channels=["shell", "iopub"])
    log.info("plain %s", "message", extra={"session": "S1"})
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["level"] == "warning" and first["logger"] == "proxy.legacy"
    assert first["msg"] == "session open"
    assert (first["kernel"], first["channels"]) == ("k-1", ["shell", "iopub"])
    assert (second["msg"], second["session"]) == ("plain message", "S1")
    assert "T" in first["ts"]


# --help and --check


def test_help_lists_every_option() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--config PATH",
        "--upstream URL",
        "--host",
        "--port",
        "--admin-port",
        "--log-level",
        "--log-format",
        "--check",
    ):
        assert option in result.stdout


def test_check_good_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(GOOD_CONFIG)
    result = run_cli("--check", "--config", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"{path}: OK: listen 127.0.0.1:8890, admin 127.0.0.1:8891, "
        "1 route: / -> http://127.0.0.1:8888\n"
    )


def test_check_uses_the_repository_default() -> None:
    result = run_cli("--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config/proxy.yaml: OK: listen 127.0.0.1:8890, ")
    assert result.stdout.endswith("1 route: / -> embedded\n")


def test_check_without_a_config_file_uses_the_builtin_default(tmp_path: Path) -> None:
    result = run_cli("--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "<built-in default>: OK: listen 127.0.0.1:8890, admin 127.0.0.1:8891, "
        "1 route: / -> embedded\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD_CONFIG + "bogus: 1\n", "bogus: unknown key"),
        (
            GOOD_CONFIG + "  - prefix: /\n    upstream: http://127.0.0.1:9999\n",
            "routes[1].prefix: duplicate prefix '/' (also routes[0])",
        ),
        (
            "routes:\n  - prefix: /\n    upstream: localhost:8888\n",
            "routes[0].upstream: 'localhost:8888' is not an http(s) URL with a host, "
            "nor 'embedded'",
        ),
        (
            "routes:\n  - prefix: /\n    upstream: ${CHANNELS_PROXY_TEST_UNSET}\n",
            "routes[0].upstream: environment variable CHANNELS_PROXY_TEST_UNSET is not set",
        ),
        (
            "listen: {port: [8890}\nroutes: []\n",
            "invalid YAML: line 1, column 21: expected ',' or ']', but got '}'",
        ),
        (GOOD_CONFIG.replace("8890", "http"), "listen.port: Input should be a valid integer, "),
    ],
    ids=["unknown-key", "duplicate-prefix", "bad-url", "unset-env", "bad-yaml", "bad-type"],
)
def test_check_bad_file_prints_one_line_and_exits_2(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    result = run_cli("--check", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"{PROG_ERROR}{path}: {message}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_bad_file_without_check_is_the_same_error(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(GOOD_CONFIG + "bogus: 1\n")
    result = run_cli("--config", str(path))
    assert (result.returncode, result.stderr) == (2, f"{PROG_ERROR}{path}: bogus: unknown key\n")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_cli("--config", str(path))
    assert (result.returncode, result.stderr) == (2, f"{PROG_ERROR}{path}: file not found\n")


def test_upstream_replaces_the_routes_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(GOOD_CONFIG.replace("8890", "9100"))
    result = run_cli("--check", "--config", str(path), "--upstream", "http://127.0.0.1:9/base/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{path}: OK: listen 127.0.0.1:9100, admin 127.0.0.1:8891, "
        "1 route: / -> http://127.0.0.1:9/base/\n"
    )


def test_upstream_needs_no_config_file(tmp_path: Path) -> None:
    result = run_cli("--check", "--upstream", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("--upstream: OK: ")
    assert result.stdout.endswith("1 route: / -> http://127.0.0.1:9\n")


def test_bad_upstream_url(tmp_path: Path) -> None:
    result = run_cli("--check", "--upstream", "ftp://127.0.0.1/", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"{PROG_ERROR}--upstream: 'ftp://127.0.0.1/' is not an http(s) URL with a host, "
        "nor 'embedded'\n"
    )


def test_host_port_and_admin_port_override_the_file() -> None:
    result = run_cli("--check", "--host", "127.0.0.2", "--port", "0", "--admin-port", "9001")
    assert result.returncode == 0, result.stderr
    assert "listen 127.0.0.2:0, admin 127.0.0.1:9001," in result.stdout


def test_port_out_of_range_is_a_usage_error() -> None:
    result = run_cli("--check", "--port", "70000")
    assert result.returncode == 2
    assert "argument --port: 70000 is not between 0 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


# Running


def test_upstream_proxies_to_a_real_server_with_json_logs(
    jupyter: JupyterServer, tmp_path: Path
) -> None:
    port = free_port()
    args = ("--upstream", jupyter.url, "--port", str(port), "--admin-port", "0")
    proxy = RunningProxy(*args, "--log-format", "json", cwd=tmp_path)
    try:
        proxy.wait_for_line(rf'"msg": ?"proxying on http://127\.0\.0\.1:{port}/"')
        status, body = get(f"http://127.0.0.1:{port}/api/status?token={jupyter.token}")
        assert status == 200
        assert "started" in json.loads(body)
        access = proxy.wait_for_line(r'"logger": ?"proxy\.access"')
    finally:
        code = proxy.stop(signal.SIGTERM)
    assert code == 0, proxy.output()
    entries = [json.loads(line) for line in proxy.lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in entries)
    request = json.loads(access.string)
    assert request["msg"] == "GET /api/status 200"
    assert request["method"] == "GET" and request["path"] == "/api/status"
    assert request["status"] == 200 and request["remote"] == "127.0.0.1"
    assert request["bytes"] > 0 and request["duration_ms"] >= 0
    assert jupyter.token not in proxy.output()


def test_text_logs_are_readable(jupyter: JupyterServer, tmp_path: Path) -> None:
    port = free_port()
    args = ("--upstream", jupyter.url, "--port", str(port), "--admin-port", "0")
    proxy = RunningProxy(*args, cwd=tmp_path)
    try:
        banner = proxy.wait_for_line(r"proxying on ")
        get(f"http://127.0.0.1:{port}/api/status", jupyter.token)
        access = proxy.wait_for_line(r" proxy\.access: ")
    finally:
        proxy.stop(signal.SIGINT)
    timestamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    assert re.fullmatch(
        rf"{timestamp} INFO proxy\.cli: proxying on http://127\.0\.0\.1:{port}/", banner.string
    )
    assert re.fullmatch(
        rf"{timestamp} INFO proxy\.access: GET /api/status 200 "
        r"bytes=\d+ duration_ms=[\d.e-]+ remote=127\.0\.0\.1",
        access.string,
    )


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("listener", ["listen", "admin"])
def test_port_in_use_is_a_clear_error(
    jupyter: JupyterServer, occupied_port: int, tmp_path: Path, listener: str
) -> None:
    ports = {"listen": str(free_port()), "admin": str(free_port()), listener: str(occupied_port)}
    result = run_cli(
        "--upstream",
        jupyter.url,
        "--port",
        ports["listen"],
        "--admin-port",
        ports["admin"],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"{PROG_ERROR}--upstream: {listener}.port: 127.0.0.1:{occupied_port} is already in use"
    )
