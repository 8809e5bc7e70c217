"""Fixtures for reliability tests: a fault relay in front of the shared jupyter_server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.faultrelay import FaultRelay
from tests.support.servers import JupyterServer


@pytest.fixture
def relay(jupyter: JupyterServer) -> Iterator[FaultRelay]:
    """A fault relay to the shared jupyter_server; point a proxy at `relay.url`."""
    with FaultRelay(("127.0.0.1", jupyter.port)) as running:
        yield running
