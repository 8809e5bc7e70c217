"""Vouching for same-origin requests that old frontends send without jupyter_server's XSRF token.

jupyter_server 2 (tornado's `check_xsrf_cookie`) refuses a cookie-authenticated POST, PUT,
PATCH or DELETE unless the token in the `X-XSRFToken` header (or `_xsrf` argument) decodes
to the same bytes as the `_xsrf` cookie. IPython 1.x/2.x frontends never send the token.

The token exists to prove the request came from a page of the same origin. The proxy can
prove that itself: a browser sets `Origin` (or at least `Referer`) on such requests and a
page cannot forge either. When the proof holds, the proxy supplies a matching pair; when it
does not (another origin, `Origin: null`, neither header), the request goes upstream
untouched and the upstream refuses it as before. Only the client's own view counts: the
scheme of the connection it made and its `Host` header, never `X-Forwarded-*`.

Tornado decodes a cookie value without a `<n>|` version prefix as a version-1 token: the
hex-decoded bytes. So a random hex string placed in both the cookie and the header passes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from multidict import MultiMapping

STATE_CHANGING_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
XSRF_COOKIE = "_xsrf"
XSRF_HEADER = "X-XSRFToken"
# Tornado also reads X-CSRFToken (Django's name); a client sending either manages its own token.
_CLIENT_TOKEN_HEADERS = ("X-XSRFToken", "X-CSRFToken")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Tornado's version-2 cookie: "2|<mask hex>|<masked token hex>|<timestamp>".
_V2_TOKEN = re.compile(r"^2\|([0-9a-fA-F]+)\|([0-9a-fA-F]+)\|[0-9]+$")
_VERSIONED = re.compile(r"^[1-9][0-9]*\|")


def vouch_for_xsrf(
    request_method: str, headers: MultiMapping[str], client_scheme: str
) -> dict[str, str] | None:
    """Header changes that satisfy the upstream's XSRF check, or None to forward untouched.

    `headers` are the client's request headers; `client_scheme` is the scheme of the
    connection the client made to the proxy ("http" or "https"). The returned mapping
    replaces whole headers (`Cookie`, `X-XSRFToken`) in the upstream request.
    """
    if request_method.upper() not in STATE_CHANGING_METHODS:
        return None
    if any(name in headers for name in _CLIENT_TOKEN_HEADERS):
        return None
    if not is_same_origin(headers, client_scheme):
        return None

    cookie_header = "; ".join(headers.getall("Cookie", ()))
    existing = cookie_value(cookie_header, XSRF_COOKIE)
    if existing is not None and _tornado_accepts(existing):
        # Echo the client's own cookie: a form-posted `_xsrf` argument, which tornado reads
        # before the header, is still compared with the cookie it was minted with.
        return {XSRF_HEADER: existing}
    token = secrets.token_hex(16)
    cookies = [c for c in _cookie_pairs(cookie_header) if _cookie_name(c) != XSRF_COOKIE]
    cookies.append(f"{XSRF_COOKIE}={token}")
    return {"Cookie": "; ".join(cookies), XSRF_HEADER: token}


def is_same_origin(headers: Mapping[str, str], client_scheme: str) -> bool:
    """True when Origin (else Referer) names the scheme and Host the client itself used."""
    host = headers.get("Host")
    if not host:
        return False
    own = _origin_of(f"{client_scheme}://{host}")
    if own is None:
        return False
    origin = headers.get("Origin")
    if origin is not None:
        # "null" (sandboxed frames, some redirects) never proves anything.
        return _origin_of(origin) == own
    referer = headers.get("Referer")
    if referer is not None:
        return _origin_of(referer) == own
    return False


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value tornado would read for cookie `name` (the last occurrence wins)."""
    found: str | None = None
    for pair in _cookie_pairs(cookie_header):
        if _cookie_name(pair) == name:
            found = pair.split("=", 1)[1].strip() if "=" in pair else ""
    return found


def _cookie_pairs(cookie_header: str) -> list[str]:
    return [chunk.strip() for chunk in cookie_header.split(";") if chunk.strip()]


def _cookie_name(pair: str) -> str:
    return pair.split("=", 1)[0].strip() if "=" in pair else ""


def _tornado_accepts(value: str) -> bool:
    """Whether tornado decodes this `_xsrf` cookie value to a token (else it mints its own)."""
    if not value or value.startswith('"'):
        # Quoted values are unquoted by the cookie parser; keep it simple and mint our own.
        return False
    if _VERSIONED.match(value):
        match = _V2_TOKEN.match(value)
        return match is not None and len(match[1]) == len(match[2]) and len(match[1]) % 2 == 0
    return True


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL with default ports made explicit, or None if unusable."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not hostname:
        return None
    return scheme, hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]
