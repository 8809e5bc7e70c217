"""Sans-I/O codecs: legacy handshake, kernel message framing, msg spec v4 <-> v5."""

from proxy.wire.adapt import SpecAdapter
from proxy.wire.errors import FrameError, HandshakeError, WireError
from proxy.wire.handshake import Handshake, parse_handshake
from proxy.wire.json_framing import (
    decode_json_frame,
    encode_json_frame,
    tag_channel,
    untag_channel,
)
from proxy.wire.message import (
    KernelMessage,
    client_message_to_kernel,
    legacy_text,
    parse_client_message,
)
from proxy.wire.v1 import SUBPROTOCOL as V1_SUBPROTOCOL
from proxy.wire.v1 import decode_v1, encode_v1

__all__ = [
    "V1_SUBPROTOCOL",
    "FrameError",
    "Handshake",
    "HandshakeError",
    "KernelMessage",
    "SpecAdapter",
    "WireError",
    "client_message_to_kernel",
    "decode_json_frame",
    "decode_v1",
    "encode_json_frame",
    "encode_v1",
    "legacy_text",
    "parse_client_message",
    "parse_handshake",
    "tag_channel",
    "untag_channel",
]
