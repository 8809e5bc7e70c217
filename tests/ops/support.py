"""Real servers and helpers for the operations tests: echo upstreams, certificates, nginx."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import REPO, ProxyProcess, free_port, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SLOW_RESPONSE_SECONDS = 30.0  # how long /slow keeps a request waiting (bounded)


class EchoUpstream:
    """A loopback aiohttp server that tells who it is and what it received.

    HTTP on any path answers JSON `{server, method, path, headers}`; `/slow` answers only
    after SLOW_RESPONSE_SECONDS; `/ws` is a websocket that echoes text as `<name>:<text>`.
    Runs in its own thread and loop so blocking test code never stalls it.
    """

    def __init__(self, name: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> EchoUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self

    async def _serve(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _echo(self, request: web.Request) -> web.Response:
        body = {
            "server": self.name,
            "method": request.method,
            "path": request.path_qs,
            "headers": {k: v for k, v in request.headers.items()},
        }
        return web.json_response(body)

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_RESPONSE_SECONDS)
        return web.Response(text="too late")

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
        return ws


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a 127.0.0.1 server cert it signed, and an unrelated self-signed one."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    self_signed_cert: Path
    self_signed_key: Path

    def server_context(self, *, self_signed: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if self_signed:
            context.load_cert_chain(self.self_signed_cert, self.self_signed_key)
        else:
            context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        if issuer != subject:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path) -> Certificates:
    """Generate the test PKI with the `cryptography` package."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("channels-proxy test CA", ca_key, "channels-proxy test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("127.0.0.1", server_key, "channels-proxy test CA", ca_key, ca=False)
    lone_key = ec.generate_private_key(ec.SECP256R1())
    lone = _certificate("127.0.0.1", lone_key, "127.0.0.1", lone_key, ca=False)
    certs = Certificates(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        self_signed_cert=directory / "self-signed.pem",
        self_signed_key=directory / "self-signed-key.pem",
    )
    certs.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(certs.server_key, server_key)
    certs.self_signed_cert.write_bytes(lone.public_bytes(serialization.Encoding.PEM))
    _write_key(certs.self_signed_key, lone_key)
    return certs


# -- proxy helpers ------------------------------------------------------------------------------


class RawConfigProxy(ProxyProcess):
    """A proxy whose config file is written as given text (for `${VAR}` and broken YAML)."""

    raw_text: str = ""

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            super().write_config(config)
            return
        self.config_path.write_text(self.raw_text)


def wait_for_log(proxy: ProxyProcess, pattern: str, count: int = 1, timeout: float = 30.0) -> str:
    """Block until `pattern` (a regex) has matched `count` lines of the proxy's log."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in proxy.log_text().splitlines() if regex.search(line)]
        if len(lines) >= count:
            return lines[count - 1]
        if proxy.proc is not None and proxy.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"log never matched {pattern!r} {count}x:\n{proxy.log_text()[-4000:]}")


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with http.get(url, **kw) as response:
        return response.status, json.loads(await response.text())


async def wait_until(condition: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Await `condition()` (an async callable) until it is true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# -- nginx --------------------------------------------------------------------------------------

NGINX_EXAMPLE = REPO / "deploy" / "nginx" / "channels-proxy.conf"


def nginx_site_config(listen_port: int, proxy_ports: list[int]) -> str:
    """The shipped nginx example with its listen port and upstream servers replaced."""
    text = NGINX_EXAMPLE.read_text()
    servers = re.findall(r"^\s*server 127\.0\.0\.1:\d+[^;]*;\s*$", text, re.MULTILINE)
    assert len(servers) == len(proxy_ports), "example must list one server line per instance"
    for line, port in zip(servers, proxy_ports, strict=True):
        text = text.replace(line, re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", line), 1)
    text, listens = re.subn(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen_port};", text)
    assert listens == 1, "example must have one `listen 127.0.0.1:PORT;`"
    return text


class Nginx:
    """Debian's nginx in the foreground with a private prefix, pid file and logs."""

    def __init__(self, prefix: Path, proxy_ports: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.site_config = nginx_site_config(self.port, proxy_ports)
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self) -> Path:
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        (self.prefix / "site.conf").write_text(self.site_config)
        main = self.prefix / "nginx.conf"
        main.write_text(
            f"""
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {self.prefix}/logs/access.log;
    client_body_temp_path {self.prefix}/tmp/body;
    proxy_temp_path {self.prefix}/tmp/proxy;
    fastcgi_temp_path {self.prefix}/tmp/fastcgi;
    uwsgi_temp_path {self.prefix}/tmp/uwsgi;
    scgi_temp_path {self.prefix}/tmp/scgi;
    include {self.prefix}/site.conf;
}}
"""
        )
        return main

    def test_config(self) -> subprocess.CompletedProcess[str]:
        main = self.write()
        return subprocess.run(
            [NGINX, "-t", "-p", str(self.prefix), "-c", str(main)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self) -> Nginx:
        main = self.write()
        log = (self.prefix / "logs" / "stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(main), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, 30, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open websockets need not finish
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""
