"""The harness's static site: IPython's static tree plus our page, served on loopback."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from aiohttp import web


class StaticSite:
    """aiohttp static server in its own thread (the browser tests themselves are synchronous)."""

    def __init__(self, ipython_static: Path, harness_dir: Path) -> None:
        self._app = web.Application()
        self._app.router.add_static("/ipython/", ipython_static)
        self._app.router.add_static("/", harness_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(self._app, access_log=None)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)

    async def _serve(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
