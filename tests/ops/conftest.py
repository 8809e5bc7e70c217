"""Fixtures for the operations tests: echo upstreams and a test PKI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.support import Certificates, EchoUpstream, make_certificates
from tests.support.servers import ProxyProcess, wait_for_port


@pytest.fixture
def echo_factory() -> Iterator[Callable[..., EchoUpstream]]:
    """Start loopback echo upstreams; all are stopped after the test."""
    started: list[EchoUpstream] = []

    def factory(name: str, **kw: Any) -> EchoUpstream:
        upstream = EchoUpstream(name, **kw).start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        upstream.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 signed by it, and a lone self-signed one."""
    directory: Path = tmp_path_factory.mktemp("pki")
    return make_certificates(directory)


@pytest.fixture
def start_proxy(proxy_factory: Callable[..., ProxyProcess]) -> Callable[..., ProxyProcess]:
    """Start a proxy process and wait for its admin listener too (it opens after the public)."""

    def start(config: dict[str, Any], extra_args: tuple[str, ...] = ()) -> ProxyProcess:
        process = proxy_factory(config, extra_args)
        if config.get("admin", {}).get("enabled", True):
            wait_for_port(int(config["admin"]["port"]), 30, process.proc)
        return process

    return start
