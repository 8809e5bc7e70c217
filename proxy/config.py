"""Configuration: the YAML schema, loading, `${VAR}` expansion and readable errors.

Every limit the proxy enforces lives here with its default, so an operator can find and
change it in one place (`config/reference.md` is generated from these models).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration problem a user can fix: carries the file, the key path and the reason."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSListen(_Model):
    """Serve HTTPS/WSS on the listener."""

    cert: str = Field(description="PEM certificate chain file.")
    key: str = Field(description="PEM private key file.")


class Listen(_Model):
    """The public listener legacy and modern clients connect to."""

    host: str = Field("127.0.0.1", description="Address the public listener binds to.")
    port: int = Field(8890, ge=0, le=65535, description="Public port (0 picks a free one).")
    tls: TLSListen | None = Field(None, description="Certificate and key to serve TLS.")


class Admin(_Model):
    """The operator listener: /healthz, /readyz, /metrics, /status."""

    enabled: bool = Field(True, description="Serve /healthz, /readyz, /metrics, /status.")
    host: str = Field("127.0.0.1", description="Admin listener address (keep it private).")
    port: int = Field(8891, ge=0, le=65535, description="Admin port (0 picks a free one).")
    readiness_timeout: float = Field(
        2.0, gt=0, description="Seconds /readyz waits for each upstream to answer."
    )


class Limits(_Model):
    """Refusal thresholds; each refusal is a close code or HTTP status, a reason and a log line."""

    max_message_bytes: int = Field(
        128 * MiB,
        gt=0,
        description="Largest websocket message accepted on either hop (aiohttp's 4 MiB default "
        "is too small for notebook outputs).",
    )
    max_sessions: int = Field(10_000, gt=0, description="Legacy sessions open at once.")
    handshake_timeout: float = Field(
        10.0, gt=0, description="Seconds a legacy socket may take to send its session frame."
    )
    pending_bytes: int = Field(
        32 * MiB,
        gt=0,
        description="Bytes one legacy session may hold for its peers (messages for sockets "
        "not attached yet, client requests waiting for the upstream). When reached the proxy "
        "stops reading from the side that produces them (TCP backpressure); nothing is dropped.",
    )


class Reconnect(_Model):
    """How a legacy session reconnects its upstream after losing it."""

    attempts: int = Field(8, ge=0, description="Upstream reconnect attempts before giving up.")
    initial_delay: float = Field(0.2, ge=0, description="First backoff delay in seconds.")
    max_delay: float = Field(5.0, ge=0, description="Backoff ceiling in seconds.")


class Sessions(_Model):
    """Legacy session lifecycle: grace period, upstream reconnects, how clients are closed."""

    grace_period: float = Field(
        30.0,
        ge=0,
        description="Seconds a legacy session keeps its upstream (and buffers its output) after "
        "its last client socket is gone, waiting for the client to come back.",
    )
    reconnect: Reconnect = Field(default_factory=Reconnect)
    close_style: Literal["reset", "clean"] = Field(
        "reset",
        description="How legacy sockets are closed when the client should reconnect: 'reset' "
        "sends the close code and reason and then resets the TCP connection, so the browser "
        "reports wasClean=false (IPython 2.x kernel.js reconnects only then); 'clean' completes "
        "the close handshake.",
    )


class Keepalive(_Model):
    """Websocket pings on both hops."""

    ping_interval: float = Field(
        20.0,
        ge=0,
        description="Seconds between pings on both hops; a peer that does not answer within "
        "the next interval is closed. 0 turns pings off.",
    )


class Shutdown(_Model):
    """Graceful stop on SIGTERM/SIGINT."""

    deadline: float = Field(
        10.0, gt=0, description="Seconds SIGTERM may take: drain in-flight, close, exit."
    )


class Logging(_Model):
    """Log level and format."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged."
    )
    format: Literal["text", "json"] = Field(
        "text", description="'text' for people, 'json' (one object per line) for collectors."
    )
    access_log: bool = Field(True, description="One line per HTTP request.")


class LegacyOptions(_Model):
    """The legacy shell/iopub/stdin endpoints of a route."""

    enabled: bool = Field(True, description="Serve the legacy shell/iopub/stdin sockets.")
    msg_spec: Literal["auto", "4", "5"] = Field(
        "auto",
        description="'auto' adapts v4<->v5 unless the client's headers carry version 5.x; "
        "'4' always adapts; '5' never does.",
    )

    @field_validator("msg_spec", mode="before")
    @classmethod
    def _spec_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class HeaderRules(_Model):
    """Request headers changed on the way upstream."""

    set: dict[str, str] = Field(default_factory=dict, description="Request headers to set.")
    remove: list[str] = Field(default_factory=list, description="Request headers to drop.")


class RouteTimeouts(_Model):
    """Upstream timeouts of a route."""

    connect: float = Field(10.0, gt=0, description="Seconds to connect to the upstream.")
    response: float | None = Field(
        None,
        gt=0,
        description="Seconds to wait for the upstream's response headers, on top of the "
        "connect budget (none: no limit).",
    )


class UpstreamTLS(_Model):
    """Certificate checks for https/wss upstreams."""

    verify: bool = Field(True, description="Verify the upstream's certificate.")
    ca_bundle: str | None = Field(None, description="PEM CA bundle for https/wss upstreams.")


class Route(_Model):
    """A path prefix mapped onto an upstream URL."""

    prefix: str = Field(description="Path prefix this route serves ('/' matches everything).")
    upstream: str = Field(
        description="http(s) URL the prefix maps onto, or 'embedded' for a local "
        "jupyter_server started by the proxy."
    )
    legacy: LegacyOptions = Field(default_factory=LegacyOptions)
    xsrf_vouch: bool | None = Field(
        None,
        description="Satisfy jupyter_server's XSRF check for requests proven same-origin "
        "(default: on where legacy is enabled).",
    )
    preserve_host: bool = Field(True, description="Send the client's Host upstream.")
    request_headers: HeaderRules = Field(default_factory=HeaderRules)
    timeouts: RouteTimeouts = Field(default_factory=RouteTimeouts)
    max_message_bytes: int | None = Field(
        None, gt=0, description="Per-route override of limits.max_message_bytes."
    )
    tls: UpstreamTLS = Field(default_factory=UpstreamTLS)
    error_pages: dict[int, str] = Field(
        default_factory=dict,
        description="Files served for 502/503/504 produced by the proxy itself.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        if any(c in value for c in "?#") or any(ord(c) < 0x21 for c in value):
            raise ValueError("must be a plain path (no query, fragment, spaces or control chars)")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream_shape(cls, value: str) -> str:
        if value == "embedded":
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host, nor 'embedded'")
        if parts.query or parts.fragment:
            raise ValueError(f"{value!r} must not have a query or fragment")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{value!r} has a bad port") from exc
        return value

    @field_validator("error_pages")
    @classmethod
    def _error_codes(cls, value: dict[int, str]) -> dict[int, str]:
        bad = sorted(set(value) - {502, 503, 504})
        if bad:
            raise ValueError(f"only 502, 503 and 504 can have error pages, not {bad}")
        return value

    @property
    def xsrf_enabled(self) -> bool:
        return self.legacy.enabled if self.xsrf_vouch is None else self.xsrf_vouch


class ProxyConfig(_Model):
    """The whole configuration file."""

    listen: Listen = Field(default_factory=Listen)
    admin: Admin = Field(default_factory=Admin)
    limits: Limits = Field(default_factory=Limits)
    sessions: Sessions = Field(default_factory=Sessions)
    keepalive: Keepalive = Field(default_factory=Keepalive)
    shutdown: Shutdown = Field(default_factory=Shutdown)
    logging: Logging = Field(default_factory=Logging)
    watch: bool = Field(False, description="Reload the file when it changes (SIGHUP always does).")
    watch_interval: float = Field(
        1.0, gt=0, description="Seconds between checks of the config file when `watch` is on."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of front proxies (e.g. a TLS-terminating load "
        "balancer) whose X-Forwarded-Proto and X-Forwarded-Host are believed. From any other "
        "peer those headers are replaced, and the XSRF same-origin proof uses the connection's "
        "own scheme.",
    )
    routes: list[Route] = Field(min_length=1, description="Prefix -> upstream mappings.")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for index, entry in enumerate(value):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise _KeyedError(
                    f"trusted_proxies[{index}]", f"{entry!r} is not an IP address or network"
                ) from None
        return value

    @model_validator(mode="after")
    def _unique_prefixes(self) -> ProxyConfig:
        seen: dict[str, int] = {}
        for index, route in enumerate(self.routes):
            if route.prefix in seen:
                raise _KeyedError(
                    f"routes[{index}].prefix",
                    f"duplicate prefix {route.prefix!r} (also routes[{seen[route.prefix]}])",
                )
            seen[route.prefix] = index
        return self

    def max_message_bytes_for(self, route: Route) -> int:
        return route.max_message_bytes or self.limits.max_message_bytes


class _KeyedError(ValueError):
    """A validator error that knows its own key path."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def expand_env(text: str, source: str, key: str, env: dict[str, str] | None = None) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with values from the environment."""
    env = os.environ if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        raise ConfigError(source, key, f"environment variable {name} is not set")

    return _VAR.sub(substitute, text)


def _expand_tree(node: Any, source: str, key: str) -> Any:
    if isinstance(node, str):
        return expand_env(node, source, key)
    if isinstance(node, list):
        return [_expand_tree(item, source, f"{key}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: _expand_tree(v, source, f"{key}.{k}" if key else str(k)) for k, v in node.items()
        }
    return node


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def config_from_dict(data: Any, source: str = "<config>") -> ProxyConfig:
    """Validate a parsed YAML document; raise ConfigError naming the first bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the top level must be a mapping")
    data = _expand_tree(data, source, "")
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _KeyedError):
            raise ConfigError(source, ctx_error.key, ctx_error.problem) from None
        key = _key_path(tuple(err["loc"]))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        raise ConfigError(source, key, message) from None


def load_config(path: str | Path) -> ProxyConfig:
    """Read and validate a YAML config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"invalid YAML: {where}{problem}") from None
    return config_from_dict(data, source)


def single_upstream_config(upstream: str) -> ProxyConfig:
    """The config `--upstream URL` stands for: one route `/` to that URL."""
    return config_from_dict({"routes": [{"prefix": "/", "upstream": upstream}]}, "--upstream")
