"""Each tenant's limits, kept: requests and tokens per minute (token buckets), concurrent requests.

A request reserves one request and its largest possible token count (every prompt's tokens
plus its `max_tokens`, or the context's remainder) before it is queued, all or nothing, and
gets back what it did not generate when it settles (finished, failed, aborted or disconnected).
So a tenant can never run past its tokens per minute: what a request may still generate is
already paid for. Buckets live here, by tenant name, across reloads of the tenants file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ember.serve.api_errors import RateLimitExceededError
from ember.serve.tenants import Tenant, TenantLimits
from ember.serve.token_bucket import TokenBucket

_MINUTE = 60.0
# Seconds a caller at its concurrency limit is told to wait: a running request may end any time.
RETRY_AFTER_CONCURRENCY = 1.0


def reset_duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it (Go's): `12ms`, `1.5s`,
    `6m0s`, `1h0m0s`; rounded up to the millisecond."""
    millis = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


class TenantUsage:
    """One tenant's buckets and requests in flight."""

    def __init__(self, limits: TenantLimits, now: float) -> None:
        self.limits = limits
        self.requests = _bucket(limits.requests_per_minute, now)
        self.tokens = _bucket(limits.tokens_per_minute, now)
        self.in_flight = 0

    def update(self, limits: TenantLimits, now: float) -> None:
        if limits == self.limits:
            return
        self.requests = _resized(self.requests, limits.requests_per_minute, now)
        self.tokens = _resized(self.tokens, limits.tokens_per_minute, now)
        self.limits = limits


def _bucket(per_minute: int | None, now: float) -> TokenBucket | None:
    return None if per_minute is None else TokenBucket.full(per_minute, per_minute / _MINUTE, now)


def _resized(bucket: TokenBucket | None, per_minute: int | None, now: float) -> TokenBucket | None:
    if bucket is None or per_minute is None:
        return _bucket(per_minute, now)
    bucket.resize(per_minute, per_minute / _MINUTE, now)
    return bucket


@dataclass(slots=True)
class Reservation:
    """What one request holds of its tenant's limits until it settles."""

    usage: TenantUsage
    tokens: int
    clock: Callable[[], float]
    settled: bool = False
    holds_slot: bool = True  # counts among the tenant's requests in flight (max_concurrent)

    def release_slot(self) -> None:
        """The request no longer counts as in flight, though its tokens stay reserved until it
        settles: a queued job, which waits in the queue rather than in this server."""
        if self.holds_slot:
            self.holds_slot = False
            self.usage.in_flight -= 1

    def settle(self, used_tokens: int) -> None:
        """The request is over, having used `used_tokens` (prompts and generated): the rest
        of its tokens go back. Once only; later calls do nothing."""
        if self.settled:
            return
        self.settled = True
        self.release_slot()
        usage = self.usage
        if usage.tokens is not None:
            usage.tokens.refund(self.tokens - used_tokens, self.clock())

    def cancel(self) -> None:
        """The server refused the request before it ran: its request and tokens go back."""
        if self.settled:
            return
        self.settle(0)
        if self.usage.requests is not None:
            self.usage.requests.refund(1, self.clock())


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._usage: dict[str, TenantUsage] = {}

    def usage(self, tenant: Tenant) -> TenantUsage:
        now = self._clock()
        usage = self._usage.get(tenant.name)
        if usage is None:
            usage = self._usage[tenant.name] = TenantUsage(tenant.limits, now)
        else:
            usage.update(tenant.limits, now)
        return usage

    def admit(self, tenant: Tenant, tokens: int) -> Reservation:
        """Reserve a request and `tokens` for `tenant`, or raise the 429 saying which limit."""
        usage = self.usage(tenant)
        limits = usage.limits
        now = self._clock()
        if limits.max_concurrent is not None and usage.in_flight >= limits.max_concurrent:
            raise RateLimitExceededError(
                f"tenant {tenant.name!r} has {usage.in_flight} requests running, its limit "
                f"(max_concurrent {limits.max_concurrent}); retry when one finishes",
                type="requests",
                retry_after=RETRY_AFTER_CONCURRENCY,
            )
        if usage.requests is not None and not usage.requests.available(now) >= 1:
            wait = usage.requests.seconds_until(1, now)
            raise RateLimitExceededError(
                f"tenant {tenant.name!r} reached its requests per minute "
                f"({limits.requests_per_minute}); retry in {reset_duration(wait or 0.0)}",
                type="requests",
                retry_after=wait,
            )
        if usage.tokens is not None:
            wait = usage.tokens.seconds_until(tokens, now)
            if wait is None:
                raise RateLimitExceededError(
                    f"this request may use {tokens} tokens (its prompts plus max_tokens, or the "
                    f"context's remainder when max_tokens is absent), more than tenant "
                    f"{tenant.name!r} may use in a minute ({limits.tokens_per_minute}); "
                    "lower max_tokens",
                    type="tokens",
                    param="max_tokens",
                )
            if wait > 0:
                left = math.floor(usage.tokens.available(now))
                raise RateLimitExceededError(
                    f"tenant {tenant.name!r} is at its tokens per minute "
                    f"({limits.tokens_per_minute}): this request may use {tokens} tokens and "
                    f"{left} are left; retry in {reset_duration(wait)}",
                    type="tokens",
                    retry_after=wait,
                )
            usage.tokens.reserve(tokens, now)
        if usage.requests is not None:
            usage.requests.reserve(1, now)
        usage.in_flight += 1
        return Reservation(usage, tokens, self._clock)

    def headers(self, tenant: Tenant) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers for the limits the tenant has, as they stand now."""
        usage = self.usage(tenant)
        now = self._clock()
        headers: list[tuple[bytes, bytes]] = []
        for kind, bucket in (("requests", usage.requests), ("tokens", usage.tokens)):
            if bucket is None:
                continue
            for name, value in (
                ("limit", str(round(bucket.capacity))),
                ("remaining", str(math.floor(bucket.available(now)))),
                ("reset", reset_duration(bucket.seconds_until_full(now))),
            ):
                headers.append((f"x-ratelimit-{name}-{kind}".encode(), value.encode()))
        return headers
