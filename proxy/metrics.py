"""Prometheus metrics, on a registry of our own so tests and several apps never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProxyMetrics:
    """Every metric the proxy exports; one instance per running proxy."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.legacy_sessions = Gauge(
            "channels_proxy_legacy_sessions", "Legacy sessions open.", registry=r
        )
        self.legacy_sockets = Gauge(
            "channels_proxy_legacy_sockets",
            "Legacy client websockets attached, by channel.",
            ["channel"],
            registry=r,
        )
        self.upstream_connections = Gauge(
            "channels_proxy_upstream_connections",
            "Upstream websockets open, by kind (legacy, passthrough).",
            ["kind"],
            registry=r,
        )
        self.messages = Counter(
            "channels_proxy_messages",
            "Kernel messages relayed on legacy sessions, by channel and direction.",
            ["channel", "direction"],
            registry=r,
        )
        self.bytes = Counter(
            "channels_proxy_bytes",
            "Bytes relayed on legacy sessions, by channel and direction.",
            ["channel", "direction"],
            registry=r,
        )
        self.dropped = Counter(
            "channels_proxy_dropped_messages",
            "Messages not delivered, by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_reconnects = Counter(
            "channels_proxy_upstream_reconnects",
            "Upstream reconnects of legacy sessions, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "channels_proxy_handshake_failures",
            "Legacy sockets refused before joining a session, by reason.",
            ["reason"],
            registry=r,
        )
        self.adaptation_failures = Counter(
            "channels_proxy_adaptation_failures",
            "Messages that could not be adapted between msg spec v4 and v5, by direction.",
            ["direction"],
            registry=r,
        )
        self.session_closes = Counter(
            "channels_proxy_session_closes",
            "Legacy sessions closed, by reason.",
            ["reason"],
            registry=r,
        )
        self.http_requests = Counter(
            "channels_proxy_http_requests",
            "Pass-through HTTP requests, by status class.",
            ["status"],
            registry=r,
        )
        self.relay_latency = Histogram(
            "channels_proxy_relay_latency_seconds",
            "Time from reading an upstream frame to handing it to the client socket.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=r,
        )
