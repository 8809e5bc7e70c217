"""Prometheus metrics, on a registry of our own so tests and several apps never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class TrafficSource(Protocol):
    """Anything that counts relayed messages: a live legacy session."""

    def traffic(self) -> Iterable[tuple[str, str, int, int]]:
        """(channel, direction, messages, bytes) rows."""
        ...


class LegacyTraffic(Collector):
    """Messages and bytes by channel and direction, summed when scraped.

    The relay path only bumps plain integers on its session; nothing is locked or looked up
    per message. Closed sessions fold their counts into `retired` so totals never go back.
    """

    def __init__(self) -> None:
        self.sources: Callable[[], Iterable[TrafficSource]] = list
        self.retired: dict[tuple[str, str], list[int]] = {}

    def retire(self, source: TrafficSource) -> None:
        for channel, direction, messages, nbytes in source.traffic():
            row = self.retired.setdefault((channel, direction), [0, 0])
            row[0] += messages
            row[1] += nbytes

    def collect(self) -> Iterator[Metric]:
        totals = {key: list(row) for key, row in self.retired.items()}
        for source in self.sources():
            for channel, direction, messages, nbytes in source.traffic():
                row = totals.setdefault((channel, direction), [0, 0])
                row[0] += messages
                row[1] += nbytes
        messages = CounterMetricFamily(
            "channels_proxy_messages",
            "Kernel messages relayed on legacy sessions, by channel and direction.",
            labels=["channel", "direction"],
        )
        nbytes = CounterMetricFamily(
            "channels_proxy_bytes",
            "Bytes relayed on legacy sessions, by channel and direction.",
            labels=["channel", "direction"],
        )
        for (channel, direction), (count, size) in sorted(totals.items()):
            messages.add_metric([channel, direction], count)
            nbytes.add_metric([channel, direction], size)
        yield messages
        yield nbytes


# Timing every message would cost more than the relay itself; one in 64 is plenty for a histogram.
RELAY_LATENCY_SAMPLE = 64


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
        self.traffic = LegacyTraffic()
        r.register(self.traffic)
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
            "Time from reading an upstream frame to handing it to the legacy client socket "
            "(sampled: one message in RELAY_LATENCY_SAMPLE).",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=r,
        )
