"""How long to wait before restarting a process that died: longer while it keeps dying young.

Shared by `ember serve`'s engine worker (`serve/supervisor.py`) and `ember worker --gpus`'s
per-GPU workers (`serve/gpu_workers.py`).
"""

from __future__ import annotations

# A process that stayed up this long counts as healthy: its next failure restarts it promptly.
HEALTHY_UPTIME = 60.0


class RestartBackoff:
    """The delay before each restart: `first`, doubling per death up to `most`, and back to
    `first` after a run longer than `HEALTHY_UPTIME` seconds."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self._next = first

    def after_run(self, uptime: float) -> float:
        """The delay before the restart that follows a run of `uptime` seconds."""
        if uptime > HEALTHY_UPTIME:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.most)
        return delay
