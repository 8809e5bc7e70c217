"""The config file watcher against a real ProxyServer object and a real file."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
import yaml

from proxy.app import ProxyServer
from proxy.config import load_config
from proxy.watch import watch_config_file
from tests.ops.support import wait_until

POLL = 0.02


def write_routes(path: Path, *prefixes: str) -> None:
    routes = [{"prefix": p, "upstream": "http://127.0.0.1:9"} for p in prefixes]
    path.write_text(yaml.safe_dump({"routes": routes}))


def reloads(caplog: pytest.LogCaptureFixture) -> int:
    return sum("configuration reloaded" in r.getMessage() for r in caplog.records)


async def test_watcher_reloads_on_content_changes_only(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "proxy.yaml"
    write_routes(path, "/")
    server = ProxyServer(load_config(path), str(path))
    watcher = asyncio.create_task(watch_config_file(server, interval=POLL))
    try:
        await asyncio.sleep(POLL * 5)
        os.utime(path)  # touched, same bytes: nothing to reload
        path.write_text(path.read_text())
        await asyncio.sleep(POLL * 10)
        assert reloads(caplog) == 0

        write_routes(path, "/", "/new/")

        async def reloaded() -> bool:
            return [r.prefix for r in server.routes.routes] == ["/new/", "/"]

        await wait_until(reloaded, timeout=10, interval=POLL)
        assert reloads(caplog) == 1

        # Saved by rename, as editors and Kubernetes ConfigMap updates do.
        staged = tmp_path / "proxy.yaml.tmp"
        write_routes(staged, "/", "/renamed/")
        path.unlink()
        await asyncio.sleep(POLL * 5)
        staged.rename(path)

        async def renamed() -> bool:
            return "/renamed/" in [r.prefix for r in server.routes.routes]

        await wait_until(renamed, timeout=10, interval=POLL)
        assert any("cannot be read" in r.getMessage() for r in caplog.records)
        assert not watcher.done()
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_watcher_survives_a_bad_file(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "proxy.yaml"
    write_routes(path, "/")
    server = ProxyServer(load_config(path), str(path))
    watcher = asyncio.create_task(watch_config_file(server, interval=POLL))
    try:
        await asyncio.sleep(POLL * 3)
        path.write_text("routes: []\n")

        async def refused() -> bool:
            return any("reload refused" in r.getMessage() for r in caplog.records)

        await wait_until(refused, timeout=10, interval=POLL)
        await asyncio.sleep(POLL * 10)
        # Refused once, not on every poll; the old routes stay.
        assert sum("reload refused" in r.getMessage() for r in caplog.records) == 1
        assert [r.prefix for r in server.routes.routes] == ["/"]

        write_routes(path, "/fixed/")

        async def fixed() -> bool:
            return [r.prefix for r in server.routes.routes] == ["/fixed/"]

        await wait_until(fixed, timeout=10, interval=POLL)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
