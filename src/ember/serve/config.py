"""How `ember serve` runs: built from the command line in `ember.cli`, passed down unchanged."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ember.engine.config import EngineConfig
from ember.errors import EmberError

_ORIGIN = re.compile(r"https?://[^/\s]+", re.IGNORECASE)
_HOST_NAME = re.compile(r"[^/\s:\[\]]+|\*|[0-9a-f:.]*:[0-9a-f:.]*", re.IGNORECASE)


# `Prefer: wait=N` and `?wait=N` are capped here: a held request is a connection and a watch.
MAX_JOB_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The job queue of `ember serve --queue` and `ember gateway` (the `queue` extra)."""

    # A NATS server or cluster with JetStream; None: start an embedded nats-server.
    nats_url: str | None = None
    # The embedded server's JetStream folder; None: under the user's state directory.
    nats_store: str | None = None
    # `ember serve --queue` runs a worker beside its engine unless --no-local-worker.
    local_worker: bool = True
    # Jobs queued or running at most (the stream's bound; past it a submit is a 429); None:
    # `QueueSettings`' default.
    max_queued_jobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_queued_jobs is not None and self.max_queued_jobs < 1:
            raise EmberError("--max-queued-jobs must be >= 1")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    # The model id clients send and /v1/models lists; None: the GGUF's default name.
    served_model_name: str | None = None
    # Run the engine on a thread of the server process instead of a crash-isolated worker.
    in_process: bool = False
    # Requests admitted to the engine but not yet running; beyond this, 503 queue_full.
    max_queued_requests: int = 512
    # Seconds from arrival to the last token; a request's own `request_timeout` may lower it.
    request_timeout: float | None = 600.0
    # After SIGTERM: seconds in-flight requests get to finish before they are cut off.
    shutdown_grace_period: float = 30.0
    max_body_bytes: int = 4 << 20
    # Upper bound on `n` (choices per request): each choice is a sequence in the engine.
    max_choices: int = 16
    # Seconds between a stream's chunks at least: tokens that arrive sooner wait and go out
    # together in one chunk (the first token and the finish never wait). 0: every step's.
    stream_interval: float = 0.02
    # Seconds before restarting a worker that died, doubling per consecutive failure.
    restart_backoff: float = 0.5
    max_restart_backoff: float = 30.0
    log_level: str = "info"
    # Host names the server answers to besides localhost, 127.0.0.1, ::1 and `host` (any IP
    # address too when `host` is a wildcard); "*": any. Others get 421 (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # Origins (scheme://host[:port]) whose browser pages may call the API, with CORS; "*": any.
    # Cross-site requests from others get 403.
    allowed_origins: tuple[str, ...] = ()
    # Open connections at most (also held under the descriptor limit); at the bound a new one
    # closes the longest-idle connection, or gets 503 when none is idle.
    max_connections: int = 4096
    # Request line and headers together; more: 431 and the connection closes.
    max_header_bytes: int = 64 << 10
    # Seconds a client has to send a request's headers, from connecting or from its previous
    # response, and the longest pause within a body; then the connection closes (408 if the
    # request had begun).
    read_timeout: float = 10.0
    # Tenants, keys and service classes (`serve/tenants_file.py`); reloaded on SIGHUP and on
    # change. None, and no `api_key`: the server is open to anyone who can reach it.
    tenants_file: str | None = None
    # The one-key shortcut: one tenant, no limits (not together with `tenants_file`).
    api_key: str | None = None
    # Serve /metrics without a key even when keys are required.
    metrics_public: bool = False
    # The async API (/v1/async/..., /v1/jobs/...) over NATS JetStream; None: off.
    queue: QueueConfig | None = None
    # An engine server started to run queued jobs (a worker's, on loopback, with no keys): the
    # queue worker's `x-ember-job-tenant` header says whose job a request is (its class and
    # weight; `serve/job_tenant.py`), as the server that took the job found it.
    trust_job_tenant: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise EmberError(f"--port must be between 0 and 65535, got {self.port}")
        if self.max_queued_requests < 0:
            raise EmberError("--max-queued-requests must be >= 0")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise EmberError("--request-timeout must be positive")
        if self.shutdown_grace_period < 0:
            raise EmberError("--shutdown-grace-period must be >= 0")
        if self.max_body_bytes < 1024:
            raise EmberError("--max-body-bytes must be at least 1024")
        if self.max_choices < 1:
            raise EmberError("--max-choices must be >= 1")
        if not 0 <= self.stream_interval <= 10:
            raise EmberError("--stream-interval must be between 0 and 10 seconds")
        if self.max_connections < 1:
            raise EmberError("--max-connections must be >= 1")
        if self.max_header_bytes < 1024:
            raise EmberError("--max-header-bytes must be at least 1024")
        if self.read_timeout <= 0:
            raise EmberError("--read-timeout must be positive")
        if self.api_key is not None and not self.api_key.strip():
            raise EmberError("--api-key must not be empty")
        if self.tenants_file is not None and self.api_key is not None:
            raise EmberError(
                "give either --tenants (EMBER_TENANTS_FILE) or --api-key (EMBER_API_KEY), not "
                "both: put the key in the tenants file as a tenant's key hash"
            )
        if self.trust_job_tenant and (self.tenants_file is not None or self.api_key is not None):
            raise EmberError(
                "a server that runs queued jobs takes their tenants from the queue: it has no "
                "--tenants or --api-key of its own"
            )
        for host in self.allowed_hosts:
            if not _HOST_NAME.fullmatch(host):
                raise EmberError(
                    f"--allowed-hosts takes host names without ports or brackets "
                    f"(localhost, example.com, ::1) or '*', got {host!r}"
                )
        for origin in self.allowed_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin.rstrip("/")):
                raise EmberError(
                    f"--allowed-origins takes origins as browsers send them, scheme://host[:port] "
                    f"(http://localhost:3000), or '*', got {origin!r}"
                )
