"""A cell that prints numbered lines, and the checks on what a legacy client received of it."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from tests.support.legacy_client import LegacyKernelClient


def numbered_lines_code(count: int, pause_every: int = 100, pause: float = 0.05) -> str:
    """Python for the kernel: `count` lines "0".."count-1", one stream message each."""
    return (
        "import time\n"
        f"for i in range({count}):\n"
        "    print(i, flush=True)\n"
        f"    if i % {pause_every} == {pause_every - 1}:\n"
        f"        time.sleep({pause})\n"
    )


def lines_for(client: LegacyKernelClient, msg_id: str) -> list[int]:
    """The numbered lines of execution `msg_id` that reached `client`, in arrival order."""
    out: list[int] = []
    for msg in client.received["iopub"]:
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["header"]["msg_type"] != "stream":
            continue
        text = msg["content"].get("data", msg["content"].get("text", ""))
        out.extend(int(line) for line in text.split())
    return out


def is_idle_of(msg_id: str) -> Any:
    def predicate(msg: dict[str, Any]) -> bool:
        return (
            msg.get("parent_header", {}).get("msg_id") == msg_id
            and msg["header"]["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
        )

    return predicate


@dataclass(frozen=True)
class Gap:
    """Lines first..last (inclusive) never arrived."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def check_sequence(lines: list[int], count: int) -> list[Gap]:
    """Assert order and uniqueness and that the output ran to its end; return the gaps."""
    assert lines, "no numbered line arrived"
    duplicates = len(lines) - len(set(lines))
    assert duplicates == 0, f"{duplicates} lines arrived twice"
    disorder = [(a, b) for a, b in pairwise(lines) if b <= a]
    assert not disorder, f"lines out of order: {disorder[:5]}"
    assert lines[-1] == count - 1, f"output stopped at line {lines[-1]} of {count - 1}"
    gaps = []
    expected = 0
    for line in lines:
        if line != expected:
            gaps.append(Gap(expected, line - 1))
        expected = line + 1
    return gaps
