"""Shared fixtures: a real jupyter_server + ipykernel, and the proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.support.servers import (
    JupyterServer,
    ProxyProcess,
    proxy_config,
    start_jupyter_server,
    start_proxy,
)


@pytest.fixture(scope="session")
def jupyter() -> Iterator[JupyterServer]:
    """One real jupyter_server with ipykernel for the whole run (token auth, temp dirs)."""
    server = start_jupyter_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxy(jupyter: JupyterServer) -> Iterator[ProxyProcess]:
    """The proxy in front of `jupyter`, with a short grace period so sessions end promptly."""
    process = start_proxy(proxy_config(jupyter.url, sessions={"grace_period": 0.5}))
    yield process
    process.stop()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., ProxyProcess]]:
    """Start extra proxies with their own config; all are stopped after the test."""
    started: list[ProxyProcess] = []

    def factory(config: dict[str, Any], extra_args: tuple[str, ...] = ()) -> ProxyProcess:
        process = start_proxy(config, extra_args)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


@pytest.fixture
async def kernel_id(jupyter: JupyterServer) -> AsyncIterator[str]:
    """A fresh kernel on the shared server, shut down after the test."""
    kid = await jupyter.create_kernel()
    yield kid
    await jupyter.delete_kernel(kid)
