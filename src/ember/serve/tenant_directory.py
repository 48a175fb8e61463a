"""The tenants in force, and their reload: on SIGHUP and when the file changes.

The file is polled (its mtime, size and inode) every half second, so a revoked key is refused
within a second of the file's change. A file that no longer reads keeps the configuration in
force, with an error in the log; requests already admitted finish under the tenant they had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from ember.serve.api_keys import short_id
from ember.serve.tenants import TenantsConfig
from ember.serve.tenants_file import TenantsFileError, load_tenants_file

logger = logging.getLogger("ember.serve")

POLL_SECONDS = 0.5


class TenantDirectory:
    def __init__(self, config: TenantsConfig, path: Path | None = None) -> None:
        self.current = config
        self._path = path
        self._stamp = _stamp(path) if path is not None else None
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, tenants_file: str | None, api_key: str | None) -> TenantDirectory:
        """The tenants file if given, else `--api-key`'s one tenant, else an open server."""
        if tenants_file is not None:
            path = Path(tenants_file)
            return cls(load_tenants_file(path), path)
        if api_key is not None:
            return cls(TenantsConfig.single_key(api_key))
        return cls(TenantsConfig.open_server())

    def describe(self) -> str:
        """For the start-up log line."""
        config = self.current
        if config.open:
            return "open to anyone (no --tenants or --api-key)"
        return (
            f"keys required: {len(config.tenants)} tenants, {config.num_keys} keys "
            f"from {config.source}"
        )

    def reload(self, why: str) -> bool:
        """Read the file again; on an error keep what is in force. True if it changed."""
        if self._path is None:
            return False
        self._stamp = _stamp(self._path)
        try:
            config = load_tenants_file(self._path)
        except TenantsFileError as error:
            logger.error("tenants file not reloaded (%s), keeping the previous one: %s", why, error)
            return False
        before = {k.hash for t in self.current.tenants.values() for k in t.keys}
        after = {k.hash for t in config.tenants.values() for k in t.keys}
        self.current = config
        logger.info(
            "tenants reloaded (%s): %d tenants, %d keys; added %s; revoked %s",
            why,
            len(config.tenants),
            config.num_keys,
            _ids(after - before),
            _ids(before - after),
        )
        return True

    def start(self) -> None:
        """Reload on SIGHUP and on change, from the running loop, until `stop`."""
        if self._path is None:
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def _watch(self) -> None:
        assert self._path is not None
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if _stamp(self._path) != self._stamp:
                self.reload("file changed")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def _ids(hashes: set[str]) -> str:
    return ", ".join(sorted(short_id(h) for h in hashes)) or "none"
