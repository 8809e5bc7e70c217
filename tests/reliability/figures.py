"""Measured figures of the reliability suite, printed in one greppable line each."""

from __future__ import annotations

import json
from typing import Any


def report_figure(name: str, **values: Any) -> None:
    """Print `FIGURE <name> {json}` so a run with `-s` (or the CI log) shows what was measured."""
    print(f"\nFIGURE {name} {json.dumps(values, sort_keys=True)}", flush=True)
