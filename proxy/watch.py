"""Reload the config file when it changes (config `watch: true`), by polling.

Polling needs no extra dependency and also sees the symlink swaps Kubernetes uses to
update a mounted ConfigMap, which inotify on the file itself would miss. The stat result
(inode, size, mtime) is cheap to read every interval; the content hash decides whether
the file really changed, so a `touch` or a rewrite with the same bytes reloads nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import ProxyServer

log = logging.getLogger("proxy.watch")

POLL_INTERVAL = 1.0  # seconds between looks at the file


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What a look at the file found: its stat signature and the hash of its bytes."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    digest: str


def stamp_of(path: str, previous: FileStamp | None = None) -> FileStamp | None:
    """The file's current stamp, or None when it cannot be read right now."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if previous is not None and signature == (
        previous.device,
        previous.inode,
        previous.size,
        previous.mtime_ns,
    ):
        return previous
    try:
        with open(path, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None
    return FileStamp(*signature, digest)


async def watch_config_file(server: ProxyServer, interval: float = POLL_INTERVAL) -> None:
    """Poll `server.config_path` every `interval` seconds and reload it when its bytes change.

    Runs until cancelled. A file that is missing for a while (an editor's save-by-rename, a
    ConfigMap update) is waited for; a bad new file is refused by `reload_from_file`, which
    logs why, and the same bytes are not tried again until they change.
    """
    path = server.config_path
    if not path:
        return
    seen = stamp_of(path)
    missing_logged = False
    log.info("watching %s for changes every %gs", path, interval)
    while True:
        await asyncio.sleep(interval)
        current = stamp_of(path, seen)
        if current is None:
            if not missing_logged:
                log.warning("config file %s cannot be read; keeping the current routes", path)
                missing_logged = True
            continue
        missing_logged = False
        if seen is not None and current.digest == seen.digest:
            seen = current
            continue
        seen = current
        log.info("config file %s changed; reloading", path)
        try:
            server.reload_from_file()
        except Exception:
            # The watcher must outlive any one bad reload, or later fixes would go unnoticed.
            log.exception("reload of %s failed; keeping the current routes", path)
