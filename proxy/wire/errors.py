"""Typed errors of the wire layer, each carrying the websocket close code to use."""

from __future__ import annotations

MAX_REASON_BYTES = 120
"""RFC 6455 allows 123 bytes of close reason; keep a margin."""


def _clip_reason(reason: str) -> str:
    """Cut `reason` to at most MAX_REASON_BYTES of UTF-8 without splitting a character."""
    encoded = reason.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_REASON_BYTES:
        return encoded.decode("utf-8")
    return encoded[: MAX_REASON_BYTES - 3].decode("utf-8", errors="ignore") + "..."


class WireError(Exception):
    """A frame or message that cannot be handled; `close_code` says how to close the socket."""

    close_code: int = 1002

    def __init__(self, reason: str, close_code: int | None = None) -> None:
        self.reason = _clip_reason(reason)
        if close_code is not None:
            self.close_code = close_code
        super().__init__(self.reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, close_code={self.close_code})"


class HandshakeError(WireError):
    """The first frame of a legacy socket is not `<session_id>:<cookie>`."""

    close_code = 1002


class FrameError(WireError):
    """A frame or kernel message that is malformed for its protocol."""

    INVALID_DATA = 1007
    """Not JSON, invalid UTF-8, or the wrong message shape."""
    UNSUPPORTED_DATA = 1003
    """Binary data from a legacy client, which only ever sends text."""
    PROTOCOL_ERROR = 1002
    """A truncated or inconsistent binary frame from upstream."""

    close_code = INVALID_DATA
