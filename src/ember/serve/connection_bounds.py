"""How many connections the server holds, and what happens at the bound.

Every connection costs a file descriptor. With the common soft limit of 1,024, about 1,100
silent sockets used to lock every client out, with nothing logged. Now the server raises its
soft limit to the hard one at start, holds connections under `--max-connections` (and under
what the limit leaves), and at the bound closes the connection idle the longest (a silent
socket, or a kept-alive one between requests) for each new one; only when none is idle does a
new connection get 503. A legitimate client sends its request at once, so a flood of silent
sockets evicts itself. One warning is logged when the bound is reached, then at most one a
minute while it keeps being reached.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger("ember.serve")

# Descriptors kept for everything but client connections (the listening socket, the worker's
# socket pair, event-loop internals, a restarted worker's pipes, connections being refused).
_RESERVED_MIN = 64
_RESERVED_FRACTION = 8
# When the hard limit is unlimited: Linux's default fs.nr_open.
_UNLIMITED_TARGET = 1 << 20
_WARNING_INTERVAL = 60.0


class IdleConnection(Protocol):
    def close_idle(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    read_timeout: float
    # Body bytes read and dropped after an early answer (a 413, a 404 with a body) to keep
    # the connection; past this it is closed instead.
    max_discarded_bytes: int


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit, log it, and return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the descriptor limit from %d: %s", soft, error)
            return soft
        logger.info("descriptor limit: %d (raised from %d, to the hard limit)", target, soft)
        return target
    limit = target if soft == resource.RLIM_INFINITY else soft
    logger.info("descriptor limit: %d (the hard limit)", limit)
    return limit


def connections_within(max_connections: int, descriptor_limit: int) -> int:
    """`max_connections`, lowered (with a warning) to what `descriptor_limit` leaves."""
    reserved = _RESERVED_MIN + descriptor_limit // _RESERVED_FRACTION
    fitting = max(1, descriptor_limit - reserved)
    if max_connections <= fitting:
        return max_connections
    logger.warning(
        "--max-connections %d does not fit the descriptor limit of %d; holding at most %d "
        "connections (raise the hard limit: `ulimit -Hn`, or LimitNOFILE= under systemd)",
        max_connections,
        descriptor_limit,
        fitting,
    )
    return fitting


class ConnectionBounds:
    """The server's open connections against `limits.max_connections`, idle ones in order."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        # Insertion order is idle order: the first has been idle the longest.
        self._idle: dict[IdleConnection, None] = {}
        self.idle_closed = 0
        self.refused = 0
        self._last_warning: float | None = None

    def set_idle(self, connection: IdleConnection, idle: bool) -> None:
        if idle:
            self._idle.pop(connection, None)
            self._idle[connection] = None
        else:
            self._idle.pop(connection, None)

    def admit(self, open_connections: int) -> bool:
        """Whether a new connection (counted in `open_connections`) may stay; at the bound, the
        longest-idle connection is closed to make room (and leaves the count at once)."""
        if open_connections <= self.limits.max_connections:
            return True
        victim = next(iter(self._idle), None)
        if victim is not None:
            self._idle.pop(victim)
            victim.close_idle()
            self.idle_closed += 1
        else:
            self.refused += 1
        self._warn(open_connections - 1)
        return victim is not None

    def _warn(self, open_connections: int) -> None:
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < _WARNING_INTERVAL:
            return
        logger.warning(
            "%d connections open, the bound (--max-connections, or the descriptor limit): "
            "each new connection closes the longest-idle one, or gets 503 if none is idle "
            "(so far %d idle connections closed, %d refused; next warning in a minute at most)",
            open_connections,
            self.idle_closed,
            self.refused,
        )
        self._last_warning = now
