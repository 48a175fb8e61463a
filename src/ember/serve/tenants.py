"""Who may call the server: tenants, their keys, class, weight, limits and models.

A `TenantsConfig` is immutable; a reloaded tenants file is a new one (`tenant_directory`).
Without keys the server is open: every caller is the anonymous tenant, with no limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ember.engine.scheduling import Scheduling
from ember.serve.api_keys import hashes_match, key_hash
from ember.serve.service_classes import DEFAULT_CLASS, DEFAULT_SERVICE_CLASSES, ServiceClass

ANONYMOUS = "anonymous"  # the tenant of an open server's callers
SINGLE_KEY_TENANT = "default"  # the tenant of `--api-key`


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """None: no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class TenantKey:
    hash: str  # "sha256:<64 hex>"
    expires: datetime | None = None  # aware


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    service_class: ServiceClass
    weight: float = 1.0
    limits: TenantLimits = field(default_factory=TenantLimits)
    models: frozenset[str] | None = None  # None: every model the server serves
    expires: datetime | None = None  # aware
    keys: tuple[TenantKey, ...] = ()

    def scheduling(self, priority: int | None) -> Scheduling:
        """The engine's ordering for a request of this tenant; the body's `priority` may only
        make it less urgent than the tenant's class (a higher number)."""
        base = self.service_class.priority
        return Scheduling(
            priority=base if priority is None else max(base, priority),
            tenant=self.name,
            weight=self.weight,
        )

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class KeyMatch:
    tenant: Tenant
    key: TenantKey

    def expired(self, now: datetime) -> bool:
        return any(t is not None and now >= t for t in (self.key.expires, self.tenant.expires))


@dataclass(frozen=True, slots=True)
class TenantsConfig:
    classes: dict[str, ServiceClass]
    tenants: dict[str, Tenant]
    source: str  # where it came from, for logs: a path, "--api-key" or "open"
    _by_hash: dict[str, KeyMatch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tenant in self.tenants.values():
            for key in tenant.keys:
                self._by_hash[key.hash] = KeyMatch(tenant, key)

    @property
    def open(self) -> bool:
        """No keys: anyone may call, as the anonymous tenant."""
        return not self._by_hash

    @property
    def num_keys(self) -> int:
        return len(self._by_hash)

    def match(self, key: str) -> KeyMatch | None:
        """The tenant whose key this is (see `api_keys` on why a dict lookup is timing-safe)."""
        stored = key_hash(key)
        found = self._by_hash.get(stored)
        if found is None or not hashes_match(found.key.hash, stored):
            return None
        return found

    @classmethod
    def open_server(cls) -> TenantsConfig:
        anonymous = Tenant(ANONYMOUS, DEFAULT_SERVICE_CLASSES[DEFAULT_CLASS])
        return cls(dict(DEFAULT_SERVICE_CLASSES), {ANONYMOUS: anonymous}, "open")

    @classmethod
    def single_key(cls, api_key: str) -> TenantsConfig:
        """`--api-key`: one tenant, with no limits, that holds the one key."""
        tenant = Tenant(
            SINGLE_KEY_TENANT,
            DEFAULT_SERVICE_CLASSES[DEFAULT_CLASS],
            keys=(TenantKey(key_hash(api_key)),),
        )
        return cls(dict(DEFAULT_SERVICE_CLASSES), {tenant.name: tenant}, "--api-key")
