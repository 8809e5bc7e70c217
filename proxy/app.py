"""The running proxy: public and admin listeners, route table, sessions, shutdown and reload."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiohttp import web

from .config import ConfigError, ProxyConfig, load_config
from .legacy.handler import handle_legacy_socket
from .legacy.registry import SessionRegistry
from .logs import AccessLogger
from .metrics import ProxyMetrics
from .passthrough import Passthrough, is_websocket_upgrade, make_upstream_client
from .routing import RouteTable

log = logging.getLogger("proxy.app")

SERVER_KEY = web.AppKey("proxy_server", "ProxyServer")


class ProxyServer:
    """One proxy process: owns the listeners, the upstream client and the session registry."""

    def __init__(self, config: ProxyConfig, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = ProxyMetrics()
        self.embedded: dict[str, Any] = {}
        self.routes = RouteTable(config.routes)
        self.registry = SessionRegistry(self)
        self.public_url = ""
        self.admin_url: str | None = None
        self.accepting = False
        self._runners: list[web.AppRunner] = []
        self.upstream_client: Any = None
        self.passthrough: Passthrough | None = None
        self._stopped = asyncio.Event()
        self._shutdown_started = False
        self._watch_task: asyncio.Task[None] | None = None

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._start_embedded()
        self.upstream_client = make_upstream_client(self.config)
        self.passthrough = Passthrough(self.upstream_client, self.config)
        public = self._public_app()
        runner = web.AppRunner(
            public,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("proxy.access")
            if self.config.logging.access_log
            else None,
            shutdown_timeout=self.config.shutdown.deadline,
        )
        await runner.setup()
        self._runners.append(runner)
        listen = self.config.listen
        site = web.TCPSite(
            runner,
            listen.host,
            listen.port,
            ssl_context=_listen_ssl(self.config, self.config_path),
            backlog=1024,
        )
        await site.start()
        self.public_url = _site_url(site, "https" if listen.tls else "http")
        if self.config.admin.enabled:
            from .admin import admin_app

            admin_runner = web.AppRunner(admin_app(self), handle_signals=False, access_log=None)
            await admin_runner.setup()
            self._runners.append(admin_runner)
            admin_site = web.TCPSite(admin_runner, self.config.admin.host, self.config.admin.port)
            await admin_site.start()
            self.admin_url = _site_url(admin_site, "http")
        self.accepting = True
        if self.config.watch and self.config_path:
            from .watch import watch_config_file

            self._watch_task = asyncio.create_task(
                watch_config_file(self, self.config.watch_interval)
            )
        log.info("listening on %s (admin %s)", self.public_url, self.admin_url or "off")

    async def _start_embedded(self) -> None:
        if not any(r.upstream == "embedded" for r in self.config.routes):
            return
        from .embedded import EmbeddedJupyter

        server = EmbeddedJupyter.for_config(self.config)
        await server.start()
        for route in self.config.routes:
            if route.upstream == "embedded":
                self.embedded[route.prefix] = server
        self.routes = RouteTable(self.config.routes, {"embedded": server.url})

    def _public_app(self) -> web.Application:
        app = web.Application(client_max_size=0, handler_args={"max_field_size": 65536})
        app[SERVER_KEY] = self
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # -- requests --------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        resolved = self.routes.match(raw_path)
        if resolved is None:
            return web.json_response({"error": "no route", "path": request.path}, status=404)
        assert self.passthrough is not None
        if not self.accepting:
            return await self.passthrough.error_response(
                request, resolved.route, 503, "the proxy is shutting down"
            )
        target = resolved.legacy_target()
        if target is not None and is_websocket_upgrade(request):
            return await handle_legacy_socket(self, request, resolved, target)
        return await self.passthrough.handle(request, resolved)

    # -- reload ----------------------------------------------------------------------------

    def apply_config(self, config: ProxyConfig) -> None:
        """Use new routes and limits for new connections; open connections keep theirs."""
        embedded_url = next(iter(self.embedded.values())).url if self.embedded else None
        if embedded_url is None and any(r.upstream == "embedded" for r in config.routes):
            raise ConfigError(
                self.config_path or "<config>",
                "routes",
                "cannot add an embedded upstream on reload",
            )
        table = RouteTable(config.routes, {"embedded": embedded_url} if embedded_url else None)
        self.config = config
        self.routes = table
        if self.passthrough is not None:
            self.passthrough.config = config
        log.info("configuration reloaded: %d routes", len(config.routes))

    def reload_from_file(self) -> bool:
        """Re-read the config file; a bad file is refused and the old routes stay."""
        if not self.config_path:
            log.warning("reload requested but the proxy runs without a config file")
            return False
        try:
            self.apply_config(load_config(self.config_path))
        except ConfigError as exc:
            log.error("reload refused, keeping the current routes: %s", exc)
            return False
        return True

    # -- run and stop ----------------------------------------------------------------------

    async def run(self) -> int:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        loop.add_signal_handler(signal.SIGHUP, self.reload_from_file)
        await self._stopped.wait()
        return 0

    async def shutdown(self) -> None:
        """Stop accepting, drain sessions (upstream first), close everything within the deadline."""
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        self.accepting = False
        deadline = self.config.shutdown.deadline
        log.info("shutting down (deadline %.1fs)", deadline)
        if self._watch_task is not None:
            self._watch_task.cancel()
        try:
            await asyncio.wait_for(self._drain(), timeout=deadline * 0.8)
        except TimeoutError:
            log.warning("shutdown deadline reached; closing what is left")
        for runner in self._runners:
            try:
                await asyncio.wait_for(runner.cleanup(), timeout=max(deadline * 0.2, 0.5))
            except TimeoutError:
                log.warning("listener cleanup timed out")
        if self.upstream_client is not None:
            await self.upstream_client.close()
        for server in {id(s): s for s in self.embedded.values()}.values():
            await server.stop()
        self._stopped.set()

    async def _drain(self) -> None:
        # Stop taking new connections first so nothing joins a session while it drains; the
        # admin listener stays up so /readyz answers 503 until the very end.
        public = self._runners[0] if self._runners else None
        if public is not None:
            for site in list(public.sites):
                await site.stop()
        await self.registry.shutdown()
        if self.passthrough is not None:
            await self.passthrough.shutdown()


def _site_url(site: web.TCPSite, scheme: str) -> str:
    server = site._server  # aiohttp exposes bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    host, port = sockets[0].getsockname()[:2] if sockets else (site._host, site._port)
    if ":" in str(host):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _listen_ssl(config: ProxyConfig, source: str | None) -> ssl.SSLContext | None:
    tls = config.listen.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            source or "<config>", "listen.tls", f"cannot load certificate/key: {exc}"
        ) from None
    return context
