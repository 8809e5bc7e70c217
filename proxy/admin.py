"""The admin listener: liveness, readiness, Prometheus metrics and a live status page.

It runs on its own (private) address so probes and scrapes never compete with clients and
never need to pass through the routes they check.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from yarl import URL

from . import __version__
from .config import Route
from .headers import ssl_for_route

if TYPE_CHECKING:
    from .app import ProxyServer

log = logging.getLogger("proxy.admin")

# An upstream that cannot answer an HTTP request this fast is not one to send clients to;
STATUS_REFRESH_SECONDS = 5

# The status page loads nothing from anywhere: no scripts, no remote styles, no framing.
_STATUS_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def admin_app(server: ProxyServer) -> web.Application:
    """The admin application: /healthz, /readyz, /metrics, /status and /status.json."""
    app = web.Application()
    handlers = AdminHandlers(server)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/status", handlers.status_page)
    app.router.add_get("/status.json", handlers.status_json)
    return app


class AdminHandlers:
    """Request handlers over one running proxy."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.started = time.time()

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive: the process runs its event loop."""
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready: accepting connections and every route's upstream answers HTTP."""
        if not self.server.accepting:
            return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
        probes = await probe_upstreams(self.server)
        unreachable = [p for p in probes if not p["reachable"]]
        body: dict[str, Any] = {"ready": not unreachable, "routes": probes}
        if unreachable:
            body["unreachable"] = [p["prefix"] for p in unreachable]
            return web.json_response(body, status=503)
        return web.json_response(body)

    async def metrics(self, request: web.Request) -> web.Response:
        """The proxy's own registry in the format the scraper asks for (text or OpenMetrics)."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        payload = encode(self.server.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": content_type})

    async def status_json(self, request: web.Request) -> web.Response:
        """Routes and live legacy sessions as JSON."""
        return web.json_response(status_document(self.server, self.started))

    async def status_page(self, request: web.Request) -> web.Response:
        """Routes and live legacy sessions as an HTML page that refreshes itself."""
        page = render_status_page(status_document(self.server, self.started))
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Content-Security-Policy": _STATUS_PAGE_CSP, "Cache-Control": "no-store"},
        )


# -- readiness --------------------------------------------------------------------------------


async def probe_upstreams(server: ProxyServer) -> list[dict[str, Any]]:
    """One HTTP GET per route's upstream base URL, concurrently; any HTTP status is reachable."""
    routes = server.routes.routes
    timeout = server.config.admin.readiness_timeout
    client = server.upstream_client
    own_client = client is None or client.closed
    if own_client:
        client = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
    try:
        results = await asyncio.gather(
            *(
                _probe(client, route, server.routes.upstream_base(route), timeout)
                for route in routes
            )
        )
    finally:
        if own_client:
            await client.close()
    return list(results)


async def _probe(
    client: aiohttp.ClientSession, route: Route, base: URL, timeout: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"prefix": route.prefix, "upstream": display_url(base)}
    try:
        async with asyncio.timeout(timeout):
            async with client.get(
                base,
                allow_redirects=False,
                ssl=ssl_for_route(route),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                result["reachable"] = True
                result["status"] = response.status
    except TimeoutError:
        result["reachable"] = False
        result["error"] = f"no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        result["reachable"] = False
        result["error"] = str(exc) or type(exc).__name__
    if not result["reachable"]:
        log.warning("upstream of route %s unreachable: %s", route.prefix, result["error"])
    return result


# -- status document --------------------------------------------------------------------------


def display_url(url: URL | str) -> str:
    """An upstream URL fit to show: any user:password in it is masked."""
    url = URL(str(url))
    if url.user is not None or url.password is not None:
        url = url.with_user("***").with_password(None)
    return str(url)


def route_summary(server: ProxyServer, route: Route) -> dict[str, Any]:
    """What /status shows about one route; header values are left out (they may be secrets)."""
    return {
        "prefix": route.prefix,
        "upstream": route.upstream
        if route.upstream == "embedded"
        else display_url(server.routes.upstream_base(route)),
        "legacy": route.legacy.enabled,
        "msg_spec": route.legacy.msg_spec,
        "preserve_host": route.preserve_host,
        "headers_set": sorted(route.request_headers.set),
        "headers_removed": list(route.request_headers.remove),
        "connect_timeout": route.timeouts.connect,
        "response_timeout": route.timeouts.response,
        "max_message_bytes": server.config.max_message_bytes_for(route),
        "tls_verify": route.tls.verify,
        "error_pages": sorted(route.error_pages),
    }


def status_document(server: ProxyServer, started: float) -> dict[str, Any]:
    """The body of /status.json."""
    return {
        "version": __version__,
        "config_path": server.config_path,
        "accepting": server.accepting,
        "uptime_seconds": round(time.time() - started, 1),
        "public_url": server.public_url,
        "routes": [route_summary(server, route) for route in server.routes.routes],
        "sessions": server.registry.snapshot(),
    }


# -- status page ------------------------------------------------------------------------------

_SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kernel_id", "kernel id"),
    ("session_id", "session id"),
    ("route", "route"),
    ("state", "state"),
    ("attached", "attached channels"),
    ("age_seconds", "age (s)"),
    ("msg_spec", "msg spec"),
    ("messages_to_client", "messages to client"),
    ("messages_from_client", "messages from client"),
    ("held_messages", "held for client"),
    ("queued_to_upstream", "queued to upstream"),
    ("pending_bytes", "pending bytes"),
    ("upstream_connects", "upstream connects"),
    ("dropped", "dropped"),
)

_ROUTE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("prefix", "prefix"),
    ("upstream", "upstream"),
    ("legacy", "legacy"),
    ("msg_spec", "msg spec"),
    ("headers_set", "headers set"),
    ("headers_removed", "headers removed"),
    ("connect_timeout", "connect timeout (s)"),
    ("response_timeout", "response timeout (s)"),
    ("tls_verify", "TLS verify"),
    ("error_pages", "error pages"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.id { font-family: ui-monospace, monospace; }
.muted { color: #777; }
"""


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def _table(rows: Iterable[Mapping[str, Any]], columns: tuple[tuple[str, str], ...]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            css = ' class="id"' if key.endswith("_id") else ""
            cells.append(f"<td{css}>{html.escape(_cell_text(row.get(key)))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    if not body:
        body.append(f'<tr><td class="muted" colspan="{len(columns)}">none</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_status_page(document: Mapping[str, Any]) -> str:
    """The status document as a self-refreshing HTML page; every value is escaped."""
    sessions = document.get("sessions", [])
    state = "accepting connections" if document.get("accepting") else "not accepting (stopping)"
    summary = (
        f"channels-proxy {document.get('version', '')} · {state} · "
        f"up {_cell_text(document.get('uptime_seconds'))} s · "
        f"config {_cell_text(document.get('config_path'))}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{STATUS_REFRESH_SECONDS}">'
        "<title>channels-proxy status</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>channels-proxy</h1>"
        f'<p class="muted">{html.escape(summary)}</p>'
        f"<h2>Routes ({len(document.get('routes', []))})</h2>"
        f"{_table(document.get('routes', []), _ROUTE_COLUMNS)}"
        f"<h2>Legacy sessions ({len(sessions)})</h2>"
        f"{_table(sessions, _SESSION_COLUMNS)}"
        f'<p class="muted">Refreshes every {STATUS_REFRESH_SECONDS} s; the same data is at '
        '<a href="status.json">status.json</a>.</p>'
        "</body></html>\n"
    )
