"""The HTTP process's link to the job queue: an embedded nats-server when it is given no URL,
the `JobQueue` over it, and whether it is reachable (`/ready`, the 503s).

nats-py reconnects by itself; while it is away `connected` is false, so `/ready` turns false
and submits answer 503, and both recover on reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ember.serve.api_errors import ServiceUnavailableError
from ember.serve.config import QueueConfig

if TYPE_CHECKING:
    from ember.queue.job_store import JobQueue
    from ember.queue.nats_server import EmbeddedNats

logger = logging.getLogger("ember.serve")


class QueueConnection:
    def __init__(self, config: QueueConfig, name: str) -> None:
        self.config = config
        self._name = name  # the NATS connection's name, as `nats-server`'s monitoring shows it
        self._nats: EmbeddedNats | None = None
        self._queue: JobQueue | None = None
        self.url: str | None = config.nats_url

    async def start(self) -> None:
        """Start the embedded server if there is no URL, then connect (`QueueUnavailableError`
        naming the URL when nothing answers there)."""
        from ember.queue.job_store import JobQueue
        from ember.queue.layout import QueueSettings
        from ember.queue.nats_server import EmbeddedNats

        if self.url is None:
            store = self.config.nats_store
            nats = EmbeddedNats(None if store is None else Path(store))
            self._nats = await asyncio.to_thread(nats.start)
            self.url = nats.url
            logger.info("started nats-server (JetStream in %s) at %s", nats.store_dir, self.url)
        try:
            bound = self.config.max_queued_jobs
            settings = QueueSettings() if bound is None else QueueSettings(max_queued_jobs=bound)
            self._queue = await JobQueue.connect(self.url, settings, name=self._name)
        except BaseException:
            await self._stop_server()
            raise
        logger.info("job queue at %s", self.url)

    async def stop(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.close()
        await self._stop_server()

    async def _stop_server(self) -> None:
        nats, self._nats = self._nats, None
        if nats is not None:
            await asyncio.to_thread(nats.stop)

    @property
    def connected(self) -> bool:
        return self._queue is not None and self._queue.connected

    @property
    def queue(self) -> JobQueue:
        """The queue, or a 503 while it is not reachable."""
        queue = self._queue
        if queue is None or not queue.connected:
            raise ServiceUnavailableError(
                f"the job queue at {self.url or 'the embedded nats-server'} cannot be reached; "
                "retry later",
                code="queue_unavailable",
            )
        return queue
