"""SessionRegistry: finds or opens the LegacySession a legacy socket belongs to."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from ..headers import ssl_for_route, upstream_request_headers
from ..routing import LegacyTarget, ResolvedRoute
from ..wire.handshake import Handshake
from .client_socket import LegacySocket
from .session import LegacySession, SessionSettings
from .upstream import UpstreamTarget

if TYPE_CHECKING:
    from ..app import ProxyServer

log = logging.getLogger("proxy.legacy")

CLOSE_TRY_AGAIN_LATER = 1013


class SessionRefused(Exception):
    """A legacy socket cannot join or open a session (a limit is reached)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SessionRegistry:
    """All open legacy sessions, keyed by (route prefix, kernel id, session id)."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._sessions: dict[tuple[str, str, str], LegacySession] = {}
        server.metrics.traffic.sources = self._sessions.values

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[LegacySession]:
        return list(self._sessions.values())

    def attach(
        self,
        request: web.Request,
        resolved: ResolvedRoute,
        target: LegacyTarget,
        handshake: Handshake,
        sock: LegacySocket,
    ) -> LegacySession:
        """Attach a socket that has sent its handshake; opens the session on first use."""
        key = (resolved.route.prefix, target.kernel_id, handshake.session_id)
        upstream = self._upstream_target(request, resolved, target, handshake)
        session = self._sessions.get(key)
        if session is None or session.closed:
            limit = self._server.config.limits.max_sessions
            if len(self._sessions) >= limit:
                raise SessionRefused(CLOSE_TRY_AGAIN_LATER, f"session limit reached ({limit})")
            session = LegacySession(
                key,
                self._settings(resolved),
                upstream,
                self._server.upstream_client,
                self._server.metrics,
                self._forget,
            )
            self._sessions[key] = session
            self._server.metrics.legacy_sessions.set(len(self._sessions))
            log.info(
                "session open kernel=%s session=%s route=%s peer=%s",
                target.kernel_id,
                handshake.session_id,
                resolved.route.prefix,
                request.remote,
            )
            session.start()
        session.attach(target.channel, sock, upstream)
        return session

    def snapshot(self) -> list[dict[str, object]]:
        return [session.snapshot() for session in self._sessions.values()]

    async def shutdown(self) -> None:
        """Drain every session concurrently (upstream first, then clients with 1012)."""
        sessions = list(self._sessions.values())
        if sessions:
            log.info("draining %d legacy sessions", len(sessions))
        await asyncio.gather(*(s.drain() for s in sessions), return_exceptions=True)

    def _forget(self, session: LegacySession) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        self._server.metrics.legacy_sessions.set(len(self._sessions))

    def _settings(self, resolved: ResolvedRoute) -> SessionSettings:
        config = self._server.config
        sessions = config.sessions
        return SessionSettings(
            pending_bytes=config.limits.pending_bytes,
            grace_period=sessions.grace_period,
            reconnect_attempts=sessions.reconnect.attempts,
            reconnect_initial_delay=sessions.reconnect.initial_delay,
            reconnect_max_delay=sessions.reconnect.max_delay,
            close_style=sessions.close_style,
            msg_spec=resolved.route.legacy.msg_spec,
        )

    def _upstream_target(
        self,
        request: web.Request,
        resolved: ResolvedRoute,
        target: LegacyTarget,
        handshake: Handshake,
    ) -> UpstreamTarget:
        config = self._server.config
        headers = upstream_request_headers(
            request, resolved, websocket=True, trusted_proxies=config.trusted_proxies
        )
        cookie = handshake.cookie_header()
        if "Cookie" not in headers and cookie:
            headers["Cookie"] = cookie  # kernel.js sends document.cookie in its handshake
        url = resolved.channels_url(target.kernel_id, handshake.session_id)
        token = request.query.get("token")
        if token:
            url = url.update_query(token=token)
        interval = config.keepalive.ping_interval
        return UpstreamTarget(
            url=url,
            headers=headers,
            ssl=ssl_for_route(resolved.route),
            max_msg_size=config.max_message_bytes_for(resolved.route),
            heartbeat=interval or None,
            connect_timeout=resolved.route.timeouts.connect,
        )
