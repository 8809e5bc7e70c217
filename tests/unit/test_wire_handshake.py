"""The legacy handshake frame: `<session_id>:<cookie>`."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.wire import Handshake, HandshakeError, parse_handshake
from proxy.wire.errors import MAX_REASON_BYTES
from proxy.wire.handshake import MAX_COOKIE_CHARS

HEX = "0123456789ABCDEF"


@st.composite
def kernel_js_2_session_ids(draw: st.DrawFn) -> str:
    """utils.uuid() of IPython 2.x: 32 uppercase hex digits, '4' at 12, one of 8-B at 16."""
    digits = draw(st.lists(st.sampled_from(HEX), min_size=32, max_size=32))
    digits[12] = "4"
    digits[16] = draw(st.sampled_from("89AB"))
    return "".join(digits)


kernel_js_1_session_ids = st.uuids().map(str)
cookie_strings = st.lists(
    st.tuples(
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="=;"),
            min_size=1,
            max_size=20,
        ),
        st.text(
            alphabet=st.characters(
                min_codepoint=0x20,
                max_codepoint=0xFF,
                exclude_characters=";\x7f",
                exclude_categories=("Cc",),
            ),
            max_size=60,
        ),
    ),
    max_size=8,
).map(lambda pairs: "; ".join(f"{name}={value}" for name, value in pairs))


@given(session_id=kernel_js_2_session_ids() | kernel_js_1_session_ids, cookie=cookie_strings)
def test_accepts_every_kernel_js_handshake(session_id: str, cookie: str) -> None:
    assert parse_handshake(f"{session_id}:{cookie}") == Handshake(session_id, cookie)


def test_splits_on_the_first_colon() -> None:
    handshake = parse_handshake("ABC:a=1; b=http://x:8888/")
    assert handshake == Handshake("ABC", "a=1; b=http://x:8888/")


def test_empty_cookie_is_fine() -> None:
    session_id = str(uuid.uuid4())
    assert parse_handshake(f"{session_id}:") == Handshake(session_id, "")


def test_cookie_at_the_size_limit_is_fine() -> None:
    assert parse_handshake("S:" + "a" * MAX_COOKIE_CHARS).cookie == "a" * MAX_COOKIE_CHARS


@pytest.mark.parametrize(
    ("frame", "reason_part"),
    [
        ("ABCDEF", "no ':'"),
        (":cookie", "empty session id"),
        ("A" * 129 + ":", "longer than 128"),
        ("AB CD:x", "A-Z a-z 0-9"),
        ("AB/CD:x", "A-Z a-z 0-9"),
        ("ABÄ:x", "A-Z a-z 0-9"),
        ("S:a=1\r\nX-Injected: 1", "U+000D"),
        ("S:a=1\nb=2", "U+000A"),
        ("S:a=\x00", "U+0000"),
        ("S:a=\x7f", "U+007F"),
        ("S:a=\x85", "U+0085"),
        ("S:" + "a" * (MAX_COOKIE_CHARS + 1), "longer than"),
    ],
)
def test_rejects_malformed_handshakes(frame: str, reason_part: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_handshake(frame)
    assert reason_part in caught.value.reason
    assert caught.value.close_code == 1002


def test_non_ascii_cookies_are_accepted_but_kept_out_of_the_header() -> None:
    handshake = parse_handshake("S:theme=\u20ac; username-127-0-0-1-8888=2|abc; x=\u00e9t\u00e9")
    assert handshake.cookie_header() == "username-127-0-0-1-8888=2|abc"


def test_rejects_binary_frames() -> None:
    with pytest.raises(HandshakeError):
        parse_handshake(b"ABC:x")  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_handshake_error(frame: str) -> None:
    try:
        parse_handshake(frame)
    except HandshakeError as exc:
        assert len(exc.reason.encode("utf-8")) <= MAX_REASON_BYTES
