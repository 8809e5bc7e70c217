"""Routes: longest-prefix matching and building upstream URLs that clients cannot steer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from yarl import URL

from .config import Route

# IPython 2.x: <prefix>api/kernels/<id>/<channel>; IPython 1.x: <prefix>kernels/<id>/<channel>.
# The old server matched kernel ids with \w+-\w+-\w+-\w+-\w+; we accept the same shape but only
# with characters that are safe in a URL path segment.
_LEGACY_PATH = re.compile(
    r"^(?P<api>(?:api/)?)kernels/"
    r"(?P<kernel_id>[A-Za-z0-9_]+-[A-Za-z0-9_]+-[A-Za-z0-9_]+-[A-Za-z0-9_]+-[A-Za-z0-9_]+)/"
    r"(?P<channel>shell|iopub|stdin)/?$"
)
_MAX_KERNEL_ID = 128


@dataclass(frozen=True, slots=True)
class LegacyTarget:
    """A request path that names a legacy channel socket."""

    kernel_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class ResolvedRoute:
    """A route matched by a request, with the part of the path below its prefix."""

    route: Route
    upstream: URL  # the route's upstream base, with "embedded" already resolved
    rest: str  # request path minus the prefix, never starting with "/"

    def upstream_url_for(self, rest: str | None = None, query: str = "") -> URL:
        """The upstream URL for `rest` (default: this request's), keeping the given query."""
        return join_upstream(self.upstream, self.rest if rest is None else rest, query)

    def legacy_target(self) -> LegacyTarget | None:
        if not self.route.legacy.enabled:
            return None
        match = _LEGACY_PATH.match(self.rest)
        if match is None or len(match["kernel_id"]) > _MAX_KERNEL_ID:
            return None
        return LegacyTarget(match["kernel_id"], match["channel"])

    def channels_url(self, kernel_id: str, session_id: str) -> URL:
        """The upstream `/channels` URL of a legacy session (ids validated by the caller)."""
        return join_upstream(
            self.upstream,
            f"api/kernels/{quote(kernel_id, safe='-_')}/channels",
            f"session_id={quote(session_id, safe='-_')}",
        )


def join_upstream(base: URL, rest: str, query: str = "") -> URL:
    """Append an already-encoded path remainder to the upstream base path."""
    path = base.raw_path
    if not path.endswith("/"):
        path += "/"
    # `rest` comes from the request's raw path, so it stays percent-encoded as the client sent it.
    raw = path + rest.lstrip("/")
    return URL.build(
        scheme=base.scheme, authority=base.raw_authority, path=raw, query_string=query, encoded=True
    )


class RouteTable:
    """The routes in force; matching is by longest prefix on the raw request path."""

    def __init__(self, routes: list[Route], resolved_upstreams: dict[str, str] | None = None):
        self._routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        resolved_upstreams = resolved_upstreams or {}
        self._bases: dict[str, URL] = {}
        for route in self._routes:
            upstream = resolved_upstreams.get(route.upstream, route.upstream)
            self._bases[route.prefix] = URL(upstream)

    @property
    def routes(self) -> list[Route]:
        return list(self._routes)

    def upstream_base(self, route: Route) -> URL:
        return self._bases[route.prefix]

    def match(self, raw_path: str) -> ResolvedRoute | None:
        """The route for a raw request path; None when no prefix matches or the path has dot
        segments (an upstream that resolves `..` would serve paths outside the route's base)."""
        if _has_dot_segment(raw_path):
            return None
        for route in self._routes:
            prefix = route.prefix
            if raw_path.startswith(prefix):
                rest = raw_path[len(prefix) :]
            elif prefix.endswith("/") and raw_path == prefix[:-1]:
                rest = ""  # "/static" served by prefix "/static/"
            else:
                continue
            if not prefix.endswith("/") and rest and not rest.startswith("/"):
                continue  # prefix "/api" must not match "/apiary"
            return ResolvedRoute(route, self._bases[prefix], rest.lstrip("/"))
        return None


def _has_dot_segment(raw_path: str) -> bool:
    if "." not in raw_path and "%2e" not in raw_path.lower():
        return False
    return any(part in (".", "..") for part in re.split(r"[/\\]", unquote(raw_path)))


def upstream_host(url: URL) -> str:
    """Host[:port] of an upstream URL as it would appear in a Host header."""
    parts = urlsplit(str(url))
    return parts.netloc.rsplit("@", 1)[-1]
