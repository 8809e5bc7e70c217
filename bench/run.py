"""The benchmark runner: every hop side by side in one run, one Markdown table.

Starts (all on 127.0.0.1, all stopped again on exit, Ctrl-C or error):
the stub upstream, channels-proxy in front of it, the plain aiohttp relay, nginx when
`/usr/sbin/nginx` exists, and for the real-stack part a jupyter_server with an ipykernel plus
a second channels-proxy in front of it. Then it measures each path in interleaved rounds
(so drift on a shared machine hits every row alike) and writes `bench/results/latest.md`
and `latest.json`.

    python -m bench.run            # full suite (`make bench`)
    python -m bench.run --quick    # smaller counts, one round (`make bench-quick`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.loadgen import (
    BenchError,
    KernelClient,
    close_all,
    connect_client,
    echo_round_trips,
    execute_and_collect,
    http_session,
    open_many,
    percentile,
    stream_workload,
)
from bench.stub_upstream import loop_factory

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
NGINX = Path("/usr/sbin/nginx")
STARTUP_SECONDS = 30.0
STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Profile:
    """How much of everything one run does."""

    name: str
    rounds: int
    small_size: int
    small_flood: int
    large_size: int
    large_flood: int
    echo_rounds: int
    paced_small_rate: float
    paced_large_rate: float
    paced_seconds: float
    idle_sessions: int
    real_rounds: int
    real_print_lines: int
    real_output_bytes: int
    real_repeats: int


FULL = Profile(
    name="full",
    rounds=3,
    small_size=300,
    small_flood=60_000,
    large_size=1_000_000,
    large_flood=200,
    echo_rounds=1_000,
    paced_small_rate=20_000,
    paced_large_rate=100,
    paced_seconds=3.0,
    idle_sessions=2_000,
    real_rounds=100,
    real_print_lines=20_000,
    real_output_bytes=10_000_000,
    real_repeats=3,
)
QUICK = Profile(
    name="quick",
    rounds=1,
    small_size=300,
    small_flood=30_000,
    large_size=1_000_000,
    large_flood=100,
    echo_rounds=300,
    paced_small_rate=20_000,
    paced_large_rate=100,
    paced_seconds=1.5,
    idle_sessions=500,
    real_rounds=30,
    real_print_lines=20_000,
    real_output_bytes=10_000_000,
    real_repeats=1,
)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Fleet:
    """Every process the run starts; `stop_all` ends them newest first, each by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the runner, which stops children in order
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_ready(self, name: str, proc: subprocess.Popen[bytes], url: str) -> None:
        """Poll `url` until it answers (any status); fail early if the process exits."""
        deadline = time.monotonic() + STARTUP_SECONDS
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise BenchError(
                        f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        await resp.read()
                        return
                await asyncio.sleep(0.1)
        raise BenchError(f"{name} did not answer {url} within {STARTUP_SECONDS:.0f} s")

    def stop(self, name: str) -> None:
        for entry in list(self.procs):
            if entry[0] == name:
                self._stop_one(*entry)
                self.procs.remove(entry)

    def stop_all(self) -> None:
        while self.procs:
            self._stop_one(*self.procs.pop())

    @staticmethod
    def _stop_one(name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT if name.startswith("nginx") else signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(STOP_SECONDS)


def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of a process, from /proc (ns resolution where available)."""
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _stat_cpu_seconds(pid)  # kernels without schedstats: clock-tick resolution
    return total_ns / 1e9


def _stat_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def nginx_config(workdir: Path, port: int, upstream_port: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = {k: workdir / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    return f"""{user}worker_processes 1;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def proxy_config(port: int, upstream: str) -> str:
    return f"""listen: {{host: 127.0.0.1, port: {port}}}
admin: {{enabled: false}}
logging: {{level: warning, access_log: false}}
routes:
  - {{prefix: /, upstream: "{upstream}"}}
"""


async def start_proxy(fleet: Fleet, name: str, upstream: str) -> tuple[str, int]:
    """channels-proxy in front of `upstream`: (base URL, pid). Config file first, flags second."""
    port = free_port()
    config = fleet.workdir / f"{name}.yaml"
    config.write_text(proxy_config(port, upstream))
    flags = ["--upstream", upstream, "--port", str(port), "--log-level", "warning"]
    attempts = [
        ["--config", str(config), *flags],
        [*flags, "--admin-port", str(free_port())],
    ]
    problem = ""
    for extra in attempts:
        proc = fleet.start(name, [sys.executable, "-m", "proxy", *extra])
        try:
            await fleet.wait_ready(name, proc, f"http://127.0.0.1:{port}/api")
            return f"http://127.0.0.1:{port}", proc.pid
        except BenchError as exc:
            problem = str(exc)
            fleet.stop(name)
    raise BenchError(problem)


# ---------------------------------------------------------------- the stub part


@dataclass
class MeasuredPath:
    """One way to reach the stub: a hop, a client kind, and the process whose CPU counts."""

    key: str
    hop: str
    client: str
    base_url: str | None
    pid: int | None
    direct_key: str
    relay_key: str | None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float) -> None:
        self.samples.setdefault(metric, []).append(value)

    def value(self, metric: str) -> float | None:
        values = self.samples.get(metric)
        if not values:
            return None
        if metric.startswith("rtt_"):
            return values[0]  # already computed over pooled samples
        return statistics.median(values)


async def measure_path(
    path: MeasuredPath, profile: Profile, http: aiohttp.ClientSession, echo: dict[str, list[float]]
) -> None:
    """One round of every workload on one path."""
    assert path.base_url is not None
    client: KernelClient = await connect_client(http, path.client, path.base_url, str(uuid.uuid4()))
    try:
        small = await stream_workload(client, "flood", profile.small_flood, profile.small_size)
        if not small.complete:
            raise BenchError(f"small flood got {small.messages}/{profile.small_flood} messages")
        path.add("small_msgs", small.msgs_per_s)
        path.add("small_mb", small.mb_per_s)
        large = await stream_workload(client, "flood", profile.large_flood, profile.large_size)
        if not large.complete:
            raise BenchError(f"1 MB flood got {large.messages}/{profile.large_flood} messages")
        path.add("large_msgs", large.msgs_per_s)
        path.add("large_mb", large.mb_per_s)
        await asyncio.sleep(0.2)  # let the 1 MB frames' memory settle before timing latency
        await echo_round_trips(client, 20, "warm-up")
        echo.setdefault(path.key, []).extend(
            await echo_round_trips(client, profile.echo_rounds, "pass")
        )
        if path.pid is None:
            return
        for label, rate, size in (
            ("small", profile.paced_small_rate, profile.small_size),
            ("large", profile.paced_large_rate, profile.large_size),
        ):
            count = max(1, int(rate * profile.paced_seconds))
            before = cpu_seconds(path.pid)
            paced = await stream_workload(
                client, "paced", count, size, rate, time_limit=profile.paced_seconds * 3 + 10
            )
            used = cpu_seconds(path.pid) - before
            if paced.messages:
                if label == "small":
                    path.add("cpu_us_per_msg", used / paced.messages * 1e6)
                else:
                    path.add("cpu_ms_per_mb", used * 1e3 / (paced.bytes / 1e6))
    finally:
        await client.close()


async def idle_memory(
    profile: Profile,
    stub_url: str,
    http: aiohttp.ClientSession,
    targets: list[tuple[str, str, str, int]],
) -> list[dict[str, Any]]:
    """RSS growth of a hop's process per idle session: (label, client kind, url, pid)."""
    rows: list[dict[str, Any]] = []
    for label, kind, url, pid in targets:
        kernel_id = str(uuid.uuid4())
        sessions = profile.idle_sessions
        row: dict[str, Any] = {"hop": label, "client": kind, "sessions": sessions}
        clients: list[KernelClient] = []
        try:
            # A few sessions first so that one-time allocations do not count.
            warm = await open_many(http, kind, url, kernel_id, 20)
            await close_all(warm)
            await asyncio.sleep(0.5)
            before = rss_bytes(pid)
            clients = await open_many(http, kind, url, kernel_id, sessions)
            await wait_upstream_connections(http, stub_url, kernel_id, sessions)
            await asyncio.sleep(1.0)
            after = rss_bytes(pid)
            row["rss_delta_bytes"] = after - before
            row["kib_per_session"] = (after - before) / sessions / 1024
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await close_all(clients)
        rows.append(row)
        await asyncio.sleep(1.0)
    return rows


async def wait_upstream_connections(
    http: aiohttp.ClientSession, stub_url: str, kernel_id: str, want: int
) -> None:
    deadline = time.monotonic() + 60
    seen = -1
    while time.monotonic() < deadline:
        async with http.get(f"{stub_url}/api/kernels/{kernel_id}") as resp:
            seen = (await resp.json())["connections"]
        if seen >= want:
            return
        await asyncio.sleep(0.2)
    raise BenchError(f"the stub saw {seen} of {want} upstream connections")


# ---------------------------------------------------------------- the real stack


async def start_jupyter(fleet: Fleet) -> tuple[str, str, str]:
    """jupyter_server + one ipykernel on loopback: (base URL, token, kernel id)."""
    port = free_port()
    token = secrets.token_hex(16)
    home = fleet.workdir / "jupyter"
    env = {}
    for name in ("runtime", "data", "config", "ipython", "root"):
        (home / name).mkdir(parents=True, exist_ok=True)
    env = {
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={home / 'root'}",
        "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
        "--allow-root",
    ]
    proc = fleet.start("jupyter_server", argv, env)
    url = f"http://127.0.0.1:{port}"
    await fleet.wait_ready("jupyter_server", proc, f"{url}/api")
    async with aiohttp.ClientSession(headers={"Authorization": f"token {token}"}) as http:
        async with http.post(f"{url}/api/kernels", json={"name": "python3"}) as resp:
            if resp.status != 201:
                raise BenchError(f"jupyter_server refused to start a kernel: {resp.status}")
            kernel_id = (await resp.json())["id"]
    return url, token, kernel_id


def kernel_alone_round_trips(rounds: int) -> list[float]:
    """Execute `pass` round trips straight to an ipykernel over ZMQ: the floor for any server."""
    from jupyter_client.manager import start_new_kernel

    with tempfile.TemporaryDirectory(prefix="bench-zmq-") as runtime:
        os.environ.setdefault("JUPYTER_RUNTIME_DIR", runtime)
        manager, client = start_new_kernel(startup_timeout=60)
        try:
            for _ in range(3):
                client.execute_interactive("pass", timeout=30)
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                client.execute("pass")
                client.get_shell_msg(timeout=30)
                samples.append(time.perf_counter() - started)
            return samples
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


async def real_stack(profile: Profile, fleet: Fleet) -> dict[str, Any]:
    """Execute round trip, a print loop and one big output: direct and through the proxy."""
    url, token, kernel_id = await start_jupyter(fleet)
    out: dict[str, Any] = {"paths": []}
    try:
        alone = await asyncio.to_thread(kernel_alone_round_trips, profile.real_rounds)
        out["kernel_alone_p50_ms"] = percentile(alone, 50) * 1e3
    except Exception as exc:  # a baseline only: report and go on
        out["kernel_alone_error"] = f"{type(exc).__name__}: {exc}"
    paths = [("direct /channels", "channels-json", url)]
    try:
        proxy_url, _ = await start_proxy(fleet, "proxy-real", url)
        paths += [
            ("channels-proxy legacy", "legacy-v4", proxy_url),
            ("channels-proxy pass-through", "channels-json", proxy_url),
        ]
    except BenchError as exc:
        out["proxy_error"] = str(exc)
        paths += [
            ("channels-proxy legacy", "legacy-v4", ""),
            ("channels-proxy pass-through", "channels-json", ""),
        ]
    print_code = f"for i in range({profile.real_print_lines}):\n    print(i)"
    big_code = (
        "from IPython.display import display\n"
        f"display({{'text/plain': 'x' * {profile.real_output_bytes}}}, raw=True)"
    )
    headers = {"Authorization": f"token {token}"}
    async with http_session() as http:
        for label, kind, base in paths:
            row: dict[str, Any] = {"path": label, "client": kind}
            out["paths"].append(row)
            if not base:
                row["error"] = "proxy did not start"
                continue
            client: KernelClient | None = None
            try:
                client = await connect_client(http, kind, base, kernel_id, headers)
                for _ in range(3):  # warm-up: kernel imports, first-message paths
                    await execute_and_collect(client, "pass", 60)
                samples = await echo_round_trips(
                    client, profile.real_rounds, "pass", time_limit=120
                )
                row["execute_p50_ms"] = percentile(samples, 50) * 1e3
                row["execute_p99_ms"] = percentile(samples, 99) * 1e3
                prints, bigs = [], []
                for _ in range(profile.real_repeats):
                    run = await execute_and_collect(client, print_code, 120)
                    if not run.complete or run.stream_lines != profile.real_print_lines:
                        raise BenchError(f"print loop: {run.stream_lines} lines, {run.types}")
                    prints.append(run.idle_seconds)
                    run = await execute_and_collect(client, big_code, 120)
                    if not run.complete or run.largest_output != profile.real_output_bytes:
                        raise BenchError(f"big output: {run.largest_output} bytes, {run.types}")
                    bigs.append(run.idle_seconds)
                row["print_loop_s"] = statistics.median(prints)
                row["big_output_s"] = statistics.median(bigs)
            except (BenchError, aiohttp.ClientError, OSError, TimeoutError, KeyError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                if client is not None:
                    await client.close()
    return out


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    for package in ("aiohttp", "uvloop", "jupyter_server", "ipykernel"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "absent"
    if NGINX.exists():
        probe = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True, check=False)
        info["nginx"] = probe.stderr.strip().rpartition("/")[2] or "unknown"
    return info


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0 or value != value:
        return "n/a"
    return f"{value / base:.2f}x"


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    profile = report["profile"]
    lines = [
        f"## channels-proxy benchmark ({profile['name']}, {report['started']})",
        "",
        f"Machine: {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, Python {m['python']}, "
        f"aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, nginx {m.get('nginx', 'absent')}, "
        f"jupyter_server {m['jupyter_server']}, ipykernel {m['ipykernel']}. "
        f"Medians of {profile['rounds']} interleaved round(s); ratios are row / baseline "
        "measured in the same run.",
        "",
        f"### Stub upstream: flood {profile['small_flood']:,} x ~{profile['small_size']} B and "
        f"{profile['large_flood']} x {profile['large_size'] / 1e6:g} MB, "
        f"echo {profile['echo_rounds']:,} round trips, paced {profile['paced_small_rate']:,.0f}/s "
        f"small and {profile['paced_large_rate']:,.0f}/s large for CPU",
        "",
        "| path | client | small msgs/s | xdirect | xrelay | small MB/s | 1 MB MB/s | xdirect "
        "| xrelay | RTT p50 µs | RTT p99 µs | +p50 µs vs direct | CPU µs/msg | xrelay "
        "| CPU ms/MB | xrelay |",
        "|---|---|" + "---:|" * 14,
    ]
    rows = {row["key"]: row for row in report["paths"]}
    for row in report["paths"]:
        v = row["values"]
        direct = rows[row["direct_key"]]["values"]
        relay = rows[row["relay_key"]]["values"] if row["relay_key"] in rows else {}
        if row.get("unavailable"):
            lines.append(f"| {row['hop']} | {row['client']} | n/a ({row['unavailable']}) |")
            continue
        added = None
        if v.get("rtt_p50") is not None and direct.get("rtt_p50") is not None:
            added = v["rtt_p50"] - direct["rtt_p50"]
        own = row["key"] == row["direct_key"]
        lines.append(
            "| "
            + " | ".join(
                [
                    row["hop"],
                    row["client"],
                    _num(v.get("small_msgs")),
                    "" if own else _ratio(v.get("small_msgs"), direct.get("small_msgs")),
                    _ratio(v.get("small_msgs"), relay.get("small_msgs")) if relay else "",
                    _num(v.get("small_mb"), 1),
                    _num(v.get("large_mb"), 0),
                    "" if own else _ratio(v.get("large_mb"), direct.get("large_mb")),
                    _ratio(v.get("large_mb"), relay.get("large_mb")) if relay else "",
                    _num(v.get("rtt_p50")),
                    _num(v.get("rtt_p99")),
                    "" if own else _num(added),
                    _num(v.get("cpu_us_per_msg"), 1) if not own else "—",
                    _ratio(v.get("cpu_us_per_msg"), relay.get("cpu_us_per_msg")) if relay else "",
                    _num(v.get("cpu_ms_per_mb"), 2) if not own else "—",
                    _ratio(v.get("cpu_ms_per_mb"), relay.get("cpu_ms_per_mb")) if relay else "",
                ]
            )
            + " |"
        )
    errors = [(r["key"], e) for r in report["paths"] for e in r["errors"]]
    for key, error in errors:
        lines.append(f"\n- {key}: {error}")
    lines += [
        "",
        f"### Idle memory: RSS growth of the hop's process with {profile['idle_sessions']:,} "
        "idle sessions",
        "",
        "| hop | client | sessions | RSS delta MiB | KiB per session |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["idle"]:
        if "error" in row:
            lines.append(f"| {row['hop']} | {row['client']} | {row['sessions']:,} | n/a | "
                         f"n/a ({row['error'][:80]}) |")  # fmt: skip
            continue
        lines.append(
            f"| {row['hop']} | {row['client']} | {row['sessions']:,} | "
            f"{row['rss_delta_bytes'] / 2**20:.1f} | {row['kib_per_session']:.1f} |"
        )
    real = report.get("real") or {}
    lines += [
        "",
        f"### Real jupyter_server + ipykernel: execute `pass` ({profile['real_rounds']} round "
        f"trips), {profile['real_print_lines']:,}-line print loop, one "
        f"{profile['real_output_bytes'] / 1e6:g} MB output (time until idle)",
        "",
        "| path | client | execute p50 ms | p99 ms | print loop s | xdirect | 10 MB output s "
        "| xdirect |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    real_rows = real.get("paths", [])
    base = real_rows[0] if real_rows else {}
    for row in real_rows:
        if "error" in row:
            lines.append(f"| {row['path']} | {row['client']} | n/a ({row['error'][:100]}) |")
            continue
        own = row is base
        lines.append(
            f"| {row['path']} | {row['client']} | {_num(row.get('execute_p50_ms'), 1)} | "
            f"{_num(row.get('execute_p99_ms'), 1)} | {_num(row.get('print_loop_s'), 2)} | "
            f"{'' if own else _ratio(row.get('print_loop_s'), base.get('print_loop_s'))} | "
            f"{_num(row.get('big_output_s'), 2)} | "
            f"{'' if own else _ratio(row.get('big_output_s'), base.get('big_output_s'))} |"
        )
    if "kernel_alone_p50_ms" in real:
        lines.append(
            f"\nThe kernel alone (jupyter_client over ZMQ, no server) answers execute `pass` in "
            f"{real['kernel_alone_p50_ms']:.1f} ms p50 on this machine: the floor for every row."
        )
    if "error" in real:
        lines.append(f"\nReal stack not measured: {real['error']}")
    lines.append(f"\nTotal time {report['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


async def run(profile: Profile, fleet: Fleet, skip_real: bool) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {
        "profile": profile.__dict__,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    stub_port = free_port()
    stub = fleet.start(
        "stub", [sys.executable, "-m", "bench.stub_upstream", "--port", str(stub_port)]
    )
    stub_url = f"http://127.0.0.1:{stub_port}"
    await fleet.wait_ready("stub", stub, f"{stub_url}/api")

    relay_port = free_port()
    relay = fleet.start(
        "plain-relay",
        [sys.executable, "-m", "bench.plain_relay", "--upstream", stub_url, "--port",
         str(relay_port)],
    )  # fmt: skip
    relay_url = f"http://127.0.0.1:{relay_port}"
    await fleet.wait_ready("plain-relay", relay, f"{relay_url}/api")

    proxy_url: str | None = None
    proxy_pid: int | None = None
    proxy_problem = ""
    try:
        proxy_url, proxy_pid = await start_proxy(fleet, "proxy", stub_url)
    except BenchError as exc:
        proxy_problem = str(exc).splitlines()[0][:120]

    nginx_url: str | None = None
    nginx_pid: int | None = None
    nginx_problem = "not installed"
    if NGINX.is_file():  # noqa: ASYNC240 - one stat at startup
        nginx_dir = fleet.workdir / "nginx"
        nginx_dir.mkdir()
        port = free_port()
        (nginx_dir / "nginx.conf").write_text(nginx_config(nginx_dir, port, stub_port))
        master = fleet.start(
            "nginx",
            [str(NGINX), "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
             "-e", str(nginx_dir / "nginx-error.log")],
        )  # fmt: skip
        try:
            await fleet.wait_ready("nginx", master, f"http://127.0.0.1:{port}/api")
            workers = psutil.Process(master.pid).children()
            if len(workers) != 1:
                raise BenchError(f"nginx has {len(workers)} workers, expected 1")
            nginx_url, nginx_pid = f"http://127.0.0.1:{port}", workers[0].pid
        except (BenchError, psutil.Error) as exc:
            nginx_problem = str(exc).splitlines()[0][:120]

    def path(
        key: str, hop: str, client: str, url: str | None, pid: int | None, note: str = "",
        direct: str = "direct-json", relay: str | None = "relay-json",
    ) -> MeasuredPath:  # fmt: skip
        return MeasuredPath(key, hop, client, url, pid, direct, relay, note if url is None else "")

    paths = [
        path("direct-json", "direct to stub", "channels-json", stub_url, None, relay=None),
        path("direct-v1", "direct to stub", "channels-v1", stub_url, None, direct="direct-v1",
             relay=None),
        path("proxy-legacy-v4", "channels-proxy legacy", "legacy-v4", proxy_url, proxy_pid,
             proxy_problem),
        path("proxy-legacy-v5", "channels-proxy legacy", "legacy-v5", proxy_url, proxy_pid,
             proxy_problem),
        path("proxy-pass-json", "channels-proxy pass-through", "channels-json", proxy_url,
             proxy_pid, proxy_problem),
        path("proxy-pass-v1", "channels-proxy pass-through", "channels-v1", proxy_url, proxy_pid,
             proxy_problem, direct="direct-v1", relay="relay-v1"),
        path("relay-json", "plain aiohttp relay", "channels-json", relay_url, relay.pid),
        path("relay-v1", "plain aiohttp relay", "channels-v1", relay_url, relay.pid,
             direct="direct-v1", relay="relay-v1"),
        path("nginx-json", "nginx 1 worker", "channels-json", nginx_url, nginx_pid,
             nginx_problem),
    ]  # fmt: skip

    echo: dict[str, list[float]] = {}
    async with http_session() as http:
        for round_number in range(profile.rounds):
            for p in paths:
                if p.base_url is None or (p.errors and round_number > 0):
                    continue
                print(f"round {round_number + 1}/{profile.rounds}: {p.key}", flush=True)
                try:
                    await measure_path(p, profile, http, echo)
                except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    p.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        for p in paths:
            if echo.get(p.key):
                p.add("rtt_p50", percentile(echo[p.key], 50) * 1e6)
                p.add("rtt_p99", percentile(echo[p.key], 99) * 1e6)

        print("idle memory", flush=True)
        targets = []
        if proxy_url and proxy_pid:
            # A fresh proxy per row: memory freed by an earlier row (or a flood) would be
            # reused by the next one and hide its growth.
            for label, kind in (
                ("channels-proxy legacy", "legacy-v4"),
                ("channels-proxy pass-through", "channels-json"),
            ):
                idle_url, idle_pid = await start_proxy(fleet, f"proxy-idle-{kind}", stub_url)
                targets.append((label, kind, idle_url, idle_pid))
        targets.append(("plain aiohttp relay", "channels-json", relay_url, relay.pid))
        if nginx_url and nginx_pid:
            targets.append(("nginx 1 worker", "channels-json", nginx_url, nginx_pid))
        report["idle"] = await idle_memory(profile, stub_url, http, targets)
        if not proxy_url:
            report["idle"][:0] = [
                {"hop": "channels-proxy legacy", "client": "legacy-v4",
                 "sessions": profile.idle_sessions, "error": proxy_problem or "not started"},
            ]  # fmt: skip

    report["paths"] = [
        {
            "key": p.key,
            "hop": p.hop,
            "client": p.client,
            "direct_key": p.direct_key,
            "relay_key": p.relay_key,
            "unavailable": p.note if p.base_url is None else "",
            "values": {metric: p.value(metric) for metric in p.samples},
            "samples": p.samples,
            "errors": p.errors,
        }
        for p in paths
    ]
    # The stub part is done: free the cores before the real stack.
    for name in ("nginx", "plain-relay", "proxy", "stub"):
        fleet.stop(name)
    if skip_real:
        report["real"] = {"error": "skipped (--no-real)"}
    else:
        print("real jupyter_server", flush=True)
        try:
            report["real"] = await real_stack(profile, fleet)
        except (BenchError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            report["real"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    report["seconds"] = time.monotonic() - started
    return report


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the channels-proxy benchmarks.")
    parser.add_argument("--quick", action="store_true", help="smaller counts, one round")
    parser.add_argument("--no-real", action="store_true", help="skip the jupyter_server part")
    parser.add_argument("--out", default=str(RESULTS), help="directory for latest.md/.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir with logs")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL

    # 2,000 legacy sessions are 6,000 client sockets here and 8,000 in the proxy.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, _raise_interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="channels-proxy-bench-"))
    fleet = Fleet(workdir)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            report = runner.run(run(profile, fleet, args.no_real))
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        fleet.stop_all()
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = render(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table)
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
