"""A tenant's limits with a scripted clock: 429 exactly where the buckets say, and the headers."""

from __future__ import annotations

import pytest

from ember.serve.api_errors import RateLimitExceededError
from ember.serve.rate_limits import RateLimiter, reset_duration
from ember.serve.service_classes import DEFAULT_SERVICE_CLASSES
from ember.serve.tenants import Tenant, TenantLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tenant(**limits: int) -> Tenant:
    return Tenant("acme", DEFAULT_SERVICE_CLASSES["standard"], limits=TenantLimits(**limits))


def headers(limiter: RateLimiter, who: Tenant) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in limiter.headers(who)}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.012, "12ms"),
        (0.0121, "13ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (360, "6m0s"),
        (61.5, "1m1.5s"),
        (3600, "1h0m0s"),
    ],
)
def test_reset_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert reset_duration(seconds) == text


def test_tokens_are_reserved_whole_and_refunded_at_settle() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    acme = tenant(tokens_per_minute=600)  # 10 a second
    first = limiter.admit(acme, 400)
    assert headers(limiter, acme) == {
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "200",
        "x-ratelimit-reset-tokens": "40s",
    }
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.admit(acme, 201)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.type == "tokens"
    assert refused.value.headers()["Retry-After"] == "1"  # 0.1 s, rounded up
    first.settle(used_tokens=150)  # 250 of the 400 were not used
    assert headers(limiter, acme)["x-ratelimit-remaining-tokens"] == "450"
    first.settle(used_tokens=0)  # once only
    assert headers(limiter, acme)["x-ratelimit-remaining-tokens"] == "450"
    second = limiter.admit(acme, 450)
    clock.now += 1.5
    assert headers(limiter, acme)["x-ratelimit-remaining-tokens"] == "15"
    second.cancel()
    assert headers(limiter, acme)["x-ratelimit-remaining-tokens"] == "465"


def test_a_request_larger_than_a_minute_of_tokens_names_max_tokens() -> None:
    limiter = RateLimiter(Clock())
    with pytest.raises(RateLimitExceededError) as refused:
        limiter.admit(tenant(tokens_per_minute=100), 101)
    assert refused.value.param == "max_tokens" and refused.value.retry_after is None


def test_requests_per_minute_and_concurrency() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    acme = tenant(requests_per_minute=2, max_concurrent=1)
    held = limiter.admit(acme, 10)
    with pytest.raises(RateLimitExceededError, match="max_concurrent 1"):
        limiter.admit(acme, 10)
    held.settle(10)
    limiter.admit(acme, 10).settle(10)
    with pytest.raises(RateLimitExceededError, match="requests per minute") as refused:
        limiter.admit(acme, 10)
    assert refused.value.type == "requests" and refused.value.headers()["Retry-After"] == "30"
    assert headers(limiter, acme) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    clock.now += 30
    limiter.admit(acme, 10)


def test_a_refused_request_takes_nothing() -> None:
    limiter = RateLimiter(Clock())
    acme = tenant(requests_per_minute=5, tokens_per_minute=100)
    with pytest.raises(RateLimitExceededError):
        limiter.admit(acme, 101)
    assert headers(limiter, acme)["x-ratelimit-remaining-requests"] == "5"
    assert headers(limiter, acme)["x-ratelimit-remaining-tokens"] == "100"


def test_new_limits_from_a_reload_keep_what_was_spent() -> None:
    limiter = RateLimiter(Clock())
    limiter.admit(tenant(tokens_per_minute=100), 80)
    assert headers(limiter, tenant(tokens_per_minute=50))["x-ratelimit-remaining-tokens"] == "0"
    assert headers(limiter, tenant(tokens_per_minute=500))["x-ratelimit-remaining-tokens"] == "450"
    assert headers(limiter, tenant()) == {}  # no limits: no headers
