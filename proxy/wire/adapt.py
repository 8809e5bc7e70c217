"""Message spec v4 <-> v5 for one legacy session, on top of `jupyter_client.adapter`.

`SpecAdapter.from_client` turns a legacy client's v4 request into v5 (via `V4toV5`) and
remembers what the v4 reply will need. `SpecAdapter.to_client` turns a kernel message
into the JSON text a legacy client reads, touching as little of it as possible: the
small header and parent header are parsed, content is only parsed for the rare reply
types whose v4 shape differs; stream, display_data and clear_output are adapted by
splicing the raw bytes. Message types an IPython 2.x frontend does not know (e.g.
update_display_data, comm_info_reply) pass through with only their header adapted.

Binary buffers have no representation in v4 JSON text: `to_client` drops them (the
legacy text is the JSON parts alone) and counts them in `dropped_buffers`.

Where jupyter_client's adapter is wrong or incomplete for an IPython 1.x/2.x frontend,
this module fixes it:

- `adapt()` stores a `datetime` in `header["date"]`; requests get an ISO 8601 string.
- V4toV5 object_info_request raises KeyError without `detail_level` (optional in v4).
- V4toV5 complete_request keeps kernel.js's UTF-16 cursor position; v5.2 counts code points.
- V5toV4 inspect_reply always says `{found: false, oname: "unknown"}`; the v4
  object_info_reply is rebuilt from `data["text/plain"]` (ANSI stripped, sections mapped to
  definition/docstring/... fields as tooltip.js reads them) and the remembered name.
- V5toV4 complete_reply raises IndexError without matches and derives `matched_text` from
  the first match; it is taken from the remembered request line and `cursor_start`.
- V5toV4 kernel_info_reply reports the kernel's 5.x protocol_version; the client speaks 4.1.
- V5toV4 execute_reply leaves pager payloads as v5 mime bundles (`data`) where v4 reads
  `text`/`html`/`start_line_number`; it never moves the results of the request's
  `user_variables` (which V4toV5 turned into `user_expressions`) back into
  `user_variables`, and omits `user_variables` entirely in error replies.
- V5toV4 execute_result keeps `application/json` as an object; v4 carried a JSON string.
- V5toV4 clear_output lacks IPython 1.x's `stdout`/`stderr`/`other` flags, without which an
  IPython 1.x frontend clears nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jupyter_client.adapter import V4toV5, V5toV4

from proxy.wire.errors import FrameError
from proxy.wire.message import KernelMessage, dumps, legacy_text, loads_object

_Pieces = tuple[bytes | memoryview, ...]
"""Content as pieces to concatenate, so large spliced content is copied only once."""
ADAPTER_MODES: tuple[str, ...] = ("auto", "4", "5")
DEFAULT_REMEMBERED_REQUESTS = 1024
V4_PROTOCOL_VERSION = [4, 1]

_V4_TO_V5 = V4toV5()
_V5_TO_V4 = V5toV4()
_V4_TYPE_FOR_V5 = dict(V5toV4.msg_type_map)

# Every key of IPython 2.x's object_info_reply (IPython.core.oinspect.info_fields).
_V4_INFO_FIELDS = (
    "type_name",
    "base_class",
    "string_form",
    "namespace",
    "length",
    "file",
    "definition",
    "docstring",
    "source",
    "init_definition",
    "class_docstring",
    "init_docstring",
    "call_def",
    "call_docstring",
    "ismagic",
    "isalias",
    "isclass",
    "argspec",
    "found",
    "name",
)
# Section titles of IPython's inspector text (3.x-9.x), mapped to v4 info fields.
_INSPECTOR_SECTIONS = {
    "Signature": "definition",
    "Definition": "definition",
    "Init signature": "init_definition",
    "Init definition": "init_definition",
    "Call signature": "call_def",
    "Call def": "call_def",
    "Docstring": "docstring",
    "Init docstring": "init_docstring",
    "Call docstring": "call_docstring",
    "Class docstring": "class_docstring",
    "Type": "type_name",
    "Base Class": "base_class",
    "String form": "string_form",
    "Repr": "string_form",
    "Namespace": "namespace",
    "Length": "length",
    "File": "file",
    "Source": "source",
    "Subclasses": "",
}
_SECTION_LINE = re.compile(
    r"(?P<title>" + "|".join(map(re.escape, _INSPECTOR_SECTIONS)) + r"):[ \t]*(?P<rest>.*)"
)
_NO_DOCSTRING = "<no docstring>"
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")

# ipykernel packs with orjson (compact) or json.dumps (default separators).
_STREAM_TEXT_KEY = re.compile(rb'(\s*\{\s*"name"\s*:\s*"[^"\\]*"\s*,\s*)"text"(?=\s*:)')
_APPLICATION_JSON = b'"application/json"'
_DISPLAY_SOURCE = b'"source":"display"'
_CLEAR_ALL_V40 = b'"stdout":true,"stderr":true,"other":true'
_JSON_WHITESPACE = frozenset(b" \t\r\n")
_OPEN_BRACE, _CLOSE_BRACE = ord("{"), ord("}")


@dataclass(slots=True)
class _Request:
    """What a v4 reply needs from the request it answers."""

    oname: str | None = None
    line: str | None = None
    cursor_pos: int | None = None
    user_variables: list[str] = field(default_factory=list)


def strip_ansi(text: str) -> str:
    """Remove terminal escape sequences (IPython colours its inspector text)."""
    return _ANSI_ESCAPE.sub("", text)


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _utf16_to_code_points(line: str, utf16_pos: int) -> int:
    """Convert a JavaScript (UTF-16 unit) offset into `line` to a Python (code point) offset."""
    if line.isascii() or utf16_pos <= 0:
        return utf16_pos
    units = 0
    for index, char in enumerate(line):
        if units >= utf16_pos:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(line)


def _splice_members(obj: bytes, members: bytes) -> _Pieces:
    """Add `members` (`"k":v,...`) to a JSON object text before its closing brace."""
    # Index arithmetic instead of rstrip/slicing: display_data can carry megabytes.
    end = len(obj)
    while end and obj[end - 1] in _JSON_WHITESPACE:
        end -= 1
    if not end or obj[end - 1] != _CLOSE_BRACE:
        raise FrameError("message content is not a JSON object")
    inner_end = end - 1
    while inner_end and obj[inner_end - 1] in _JSON_WHITESPACE:
        inner_end -= 1
    separator = b"" if inner_end and obj[inner_end - 1] == _OPEN_BRACE else b","
    return (memoryview(obj)[:inner_end], separator, members, b"}")


def parse_inspector_text(text: str) -> dict[str, str]:
    """Map IPython inspector text (`Signature: ...`, `Docstring:` ...) to v4 info fields.

    A docstring line that itself starts with a section title (e.g. `Type: x`) is read as a
    new section; the inspector text gives no way to tell the two apart.
    """
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in strip_ansi(text).split("\n"):
        match = _SECTION_LINE.fullmatch(line)
        if match is not None:
            key = _INSPECTOR_SECTIONS[match.group("title")]
            current = []
            if key:
                fields.setdefault(key, current)
            rest = match.group("rest").rstrip()
            if rest:
                current.append(rest)
        elif current is not None:
            current.append(line)
    result = {}
    for key, lines in fields.items():
        value = "\n".join(lines).strip("\n")
        if value and value != _NO_DOCSTRING:
            result[key] = value
    return result


class SpecAdapter:
    """Translate between a legacy client's msg spec v4 and the kernel's v5 for one session."""

    def __init__(
        self, mode: str = "auto", remembered_requests: int = DEFAULT_REMEMBERED_REQUESTS
    ) -> None:
        if mode not in ADAPTER_MODES:
            raise ValueError(f"adapter mode must be one of {ADAPTER_MODES}, not {mode!r}")
        if remembered_requests < 1:
            raise ValueError("remembered_requests must be at least 1")
        self.mode = mode
        self.remembered_requests = remembered_requests
        self.dropped_buffers = 0
        """Binary buffers dropped because v4 JSON text cannot carry them."""
        self._client_speaks_v5 = False
        self._requests: dict[str, _Request] = {}
        self._last_parent: tuple[bytes, bytes, str | None] = (b"", b"", None)

    @property
    def adapting(self) -> bool:
        """Whether messages are translated (v4 client) or passed through (v5 client)."""
        if self.mode == "auto":
            return not self._client_speaks_v5
        return self.mode == "4"

    # client -> kernel

    def from_client(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Adapt a parsed legacy client message to v5 (in place) when adapting."""
        header = msg.get("header")
        if not isinstance(header, dict):
            raise FrameError("client message has no 'header' object")
        if self.mode == "auto" and not self._client_speaks_v5:
            version = header.get("version")
            if isinstance(version, str) and version.startswith("5"):
                self._client_speaks_v5 = True
        if not self.adapting:
            return msg
        for name in ("parent_header", "metadata", "content"):
            if not isinstance(msg.setdefault(name, {}), dict):
                raise FrameError(f"client message '{name}' is not a JSON object")
        msg_type = header.get("msg_type")
        self._remember(msg_type, header.get("msg_id"), msg["content"])
        header.setdefault("date", _utc_now_iso())
        try:
            return _V4_TO_V5(msg)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FrameError(f"cannot adapt {msg_type} to v5: {exc!r}") from exc

    def _remember(self, msg_type: Any, msg_id: Any, content: dict[str, Any]) -> None:
        request: _Request | None = None
        if msg_type == "object_info_request":
            oname = content.get("oname")
            if not isinstance(oname, str):
                raise FrameError("object_info_request has no string 'oname'")
            content.setdefault("detail_level", 0)
            request = _Request(oname=oname)
        elif msg_type == "complete_request":
            line, cursor_pos = content.get("line"), content.get("cursor_pos")
            if not isinstance(line, str) or type(cursor_pos) is not int:
                raise FrameError("complete_request needs string 'line' and int 'cursor_pos'")
            cursor_pos = _utf16_to_code_points(line, cursor_pos)
            content["cursor_pos"] = cursor_pos
            request = _Request(line=line, cursor_pos=cursor_pos)
        elif msg_type == "execute_request":
            names = content.get("user_variables") or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FrameError("execute_request 'user_variables' is not a list of strings")
            if names:
                request = _Request(user_variables=names)
        if request is None or not isinstance(msg_id, str):
            return
        self._requests.pop(msg_id, None)
        self._requests[msg_id] = request
        while len(self._requests) > self.remembered_requests:
            del self._requests[next(iter(self._requests))]

    # kernel -> client

    def to_client(self, msg: KernelMessage) -> bytes:
        """Return the JSON text a legacy client receives for a kernel message."""
        header = loads_object(msg.header, "kernel message header")
        msg_type = header.get("msg_type")
        if not isinstance(msg_type, str):
            raise FrameError("kernel message header has no string 'msg_type'")
        msg_id = header.get("msg_id")
        if not isinstance(msg_id, str):
            msg_id = None
        if msg.buffers:
            self.dropped_buffers += len(msg.buffers)
        if not self.adapting:
            return legacy_text(msg, msg_id=msg_id, msg_type=msg_type)

        v4_type = _V4_TYPE_FOR_V5.get(msg_type, msg_type)
        header.pop("version", None)
        header["msg_type"] = v4_type
        parent_header, parent_id = self._v4_parent(msg.parent_header)
        content = self._v4_content(msg_type, msg.content, parent_id)
        return legacy_text(
            msg,
            header=dumps(header),
            content=content,
            parent_header=parent_header,
            msg_id=msg_id,
            msg_type=v4_type,
        )

    def _v4_parent(self, raw: bytes) -> tuple[bytes, str | None]:
        # Consecutive iopub messages usually share one parent: convert it once.
        last_raw, last_v4, last_id = self._last_parent
        if raw == last_raw:
            return last_v4, last_id
        parent = loads_object(raw, "kernel message parent_header")
        parent_id = parent.get("msg_id")
        if not isinstance(parent_id, str):
            parent_id = None
        if parent:
            parent.pop("version", None)
            parent_type = parent.get("msg_type")
            if isinstance(parent_type, str) and parent_type in _V4_TYPE_FOR_V5:
                parent["msg_type"] = _V4_TYPE_FOR_V5[parent_type]
            v4 = dumps(parent)
        else:
            v4 = raw
        self._last_parent = (raw, v4, parent_id)
        return v4, parent_id

    def _v4_content(self, msg_type: str, raw: bytes, parent_id: str | None) -> bytes | _Pieces:
        if msg_type == "stream":
            return _v4_stream(raw)
        if msg_type == "display_data":
            if _APPLICATION_JSON in raw:
                return dumps(_adapted(_V5_TO_V4.display_data, msg_type, raw))
            return _splice_members(raw, _DISPLAY_SOURCE)
        if msg_type == "execute_result":
            if _APPLICATION_JSON in raw:
                return dumps(_v4_execute_result(raw))
            return raw
        if msg_type == "clear_output":
            return _splice_members(raw, _CLEAR_ALL_V40)
        if msg_type == "kernel_info_reply":
            content = _adapted(_V5_TO_V4.kernel_info_reply, msg_type, raw)
            content["protocol_version"] = list(V4_PROTOCOL_VERSION)
            return dumps(content)
        if msg_type == "input_request":
            return dumps(_adapted(_V5_TO_V4.input_request, msg_type, raw))
        if msg_type == "execute_reply":
            request = self._requests.pop(parent_id, None) if parent_id else None
            return dumps(_v4_execute_reply(raw, request))
        if msg_type == "complete_reply":
            request = self._requests.pop(parent_id, None) if parent_id else None
            return dumps(_v4_complete_reply(raw, request))
        if msg_type == "inspect_reply":
            request = self._requests.pop(parent_id, None) if parent_id else None
            return dumps(_v4_object_info_reply(raw, request))
        return raw


def _adapted(handler: Any, msg_type: str, raw: bytes) -> dict[str, Any]:
    """Run one V5toV4 content handler on parsed content."""
    wrapper = {"content": loads_object(raw, f"{msg_type} content")}
    try:
        handler(wrapper)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise FrameError(f"cannot adapt {msg_type} to v4: {exc!r}") from exc
    return wrapper["content"]


def _v4_stream(raw: bytes) -> bytes | _Pieces:
    match = _STREAM_TEXT_KEY.match(raw)
    if match is not None:
        return (match.group(1), b'"data"', memoryview(raw)[match.end() :])
    content = loads_object(raw, "stream content")
    if "text" in content:
        content["data"] = content.pop("text")
    return dumps(content)


def _v4_execute_result(raw: bytes) -> dict[str, Any]:
    content = loads_object(raw, "execute_result content")
    data = content.get("data")
    if isinstance(data, dict) and "application/json" in data:
        data["application/json"] = json.dumps(data["application/json"])
    return content


def _v4_execute_reply(raw: bytes, request: _Request | None) -> dict[str, Any]:
    content = loads_object(raw, "execute_reply content")
    user_expressions = content.get("user_expressions")
    if not isinstance(user_expressions, dict):
        user_expressions = content["user_expressions"] = {}
    user_variables = content.get("user_variables")
    if not isinstance(user_variables, dict):
        user_variables = content["user_variables"] = {}
    if request is not None:
        for name in request.user_variables:
            if name in user_expressions:
                user_variables[name] = user_expressions.pop(name)
    payloads = content.get("payload")
    if isinstance(payloads, list):
        for payload in payloads:
            if isinstance(payload, dict) and payload.get("source") == "page":
                _v4_page_payload(payload)
    return content


def _v4_page_payload(payload: dict[str, Any]) -> None:
    data = payload.pop("data", None)
    if not isinstance(data, dict):
        data = {}
    payload.setdefault("text", data.get("text/plain", ""))
    payload.setdefault("html", data.get("text/html"))
    payload.setdefault("start_line_number", payload.pop("start", 0))


def _v4_complete_reply(raw: bytes, request: _Request | None) -> dict[str, Any]:
    content = loads_object(raw, "complete_reply content")
    matches = content.get("matches")
    if not isinstance(matches, list):
        matches = []
    start, end = content.get("cursor_start"), content.get("cursor_end")
    matched_text = ""
    if type(start) is int and type(end) is int:
        if request is not None and request.line is not None and request.cursor_pos is not None:
            # v4 replaces matched_text right before the cursor: start there.
            if 0 <= start <= request.cursor_pos <= len(request.line):
                matched_text = request.line[start : request.cursor_pos]
        elif matches and isinstance(matches[0], str) and end >= start:
            matched_text = matches[0][: end - start]
    return {
        "matches": matches,
        "matched_text": matched_text,
        "status": content.get("status", "ok"),
    }


def _v4_object_info_reply(raw: bytes, request: _Request | None) -> dict[str, Any]:
    content = loads_object(raw, "inspect_reply content")
    info: dict[str, Any] = dict.fromkeys(_V4_INFO_FIELDS)
    info["name"] = request.oname if request is not None and request.oname is not None else ""
    info["ismagic"] = info["isalias"] = info["isclass"] = False
    found = content.get("found") is True and content.get("status", "ok") == "ok"
    info["found"] = found
    if not found:
        return info
    data = content.get("data")
    text = data.get("text/plain") if isinstance(data, dict) else None
    if isinstance(text, str):
        fields = parse_inspector_text(text)
        if not fields and text.strip():
            # Not IPython's section layout (another kernel): show it all as the docstring.
            fields = {"docstring": strip_ansi(text)}
        info.update(fields)
        info["isalias"] = "Repr:" in strip_ansi(text).split("\n", 1)[0]
        info["isclass"] = info.get("type_name") == "type"
    return info
