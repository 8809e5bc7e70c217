"""The legacy handshake: the first text frame kernel.js sends on each socket."""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.wire.errors import HandshakeError

MAX_SESSION_ID_CHARS = 128
MAX_COOKIE_CHARS = 16 * 1024

# kernel.js 2.x: 32 uppercase hex digits; 1.x: a dashed UUID.
_SESSION_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_SESSION_ID_CHARS}}}")
# document.cookie is text; control characters (CR/LF above all) are never part of it.
_COOKIE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_HEADER_SAFE_PAIR = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a legacy socket introduced itself with."""

    session_id: str
    cookie: str

    def cookie_header(self) -> str:
        """The cookie pairs that can travel in an HTTP Cookie header (ASCII only).

        A browser may hold unrelated cookies with other characters; they are left out rather
        than refusing the socket, since the server's login cookie is always ASCII.
        """
        pairs = (pair.strip() for pair in self.cookie.split(";"))
        return "; ".join(p for p in pairs if p and _HEADER_SAFE_PAIR.fullmatch(p))


def parse_handshake(frame: str) -> Handshake:
    """Parse `"<session_id>:<cookie string>"` (kernel.js: `session_id + ':' + document.cookie`)."""
    if not isinstance(frame, str):
        raise HandshakeError("handshake must be a text frame")
    session_id, sep, cookie = frame.partition(":")
    if not sep:
        raise HandshakeError("handshake has no ':' after the session id")
    if not session_id:
        raise HandshakeError("handshake has an empty session id")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise HandshakeError(f"session id longer than {MAX_SESSION_ID_CHARS} characters")
    if not _SESSION_ID.fullmatch(session_id):
        raise HandshakeError("session id may only contain A-Z a-z 0-9 _ -")
    if len(cookie) > MAX_COOKIE_CHARS:
        raise HandshakeError(f"handshake cookie longer than {MAX_COOKIE_CHARS} characters")
    bad = _COOKIE_FORBIDDEN.search(cookie)
    if bad is not None:
        raise HandshakeError(
            f"handshake cookie has forbidden character U+{ord(bad.group()):04X} "
            f"at offset {bad.start()}"
        )
    return Handshake(session_id=session_id, cookie=cookie)
