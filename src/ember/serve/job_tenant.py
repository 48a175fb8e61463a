"""A job's tenant, as it travels from the server that took the job to the worker that runs it.

The submitting server knows the caller's tenant (its key, class and weight); the worker has no
tenants file and no keys. So the job carries the tenant's name, weight and whole service class
(`Job.scheduling`), the queue worker forwards them to its engine server in one header, and that
server (only one started to run jobs: `ServerConfig.trust_job_tenant`) schedules the job as the
tenant's: its class's priority, queue bound and timeout, its weight in fair share, and the body's
`priority` applied on top as for a sync request. Limits do not travel: the submitting server
charged them, once.
"""

from __future__ import annotations

import msgspec

from ember.serve.service_classes import ServiceClass
from ember.serve.tenants import Tenant

# The queue worker's header to its engine server; trusted only by a server started to run jobs.
JOB_TENANT_HEADER = "x-ember-job-tenant"


class JobTenant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    service_class: ServiceClass
    weight: float = 1.0

    @classmethod
    def of(cls, tenant: Tenant) -> JobTenant:
        return cls(tenant.name, tenant.service_class, tenant.weight)

    def tenant(self) -> Tenant:
        """The tenant as the engine server schedules it: no keys and no limits of its own."""
        return Tenant(self.name, self.service_class, self.weight)


def encode_job_tenant(tenant: Tenant) -> str:
    return msgspec.json.encode(JobTenant.of(tenant)).decode()


def decode_job_tenant(text: str) -> Tenant:
    """The tenant a job header names; `ValueError` saying what is wrong with it."""
    try:
        found = msgspec.json.decode(text, type=JobTenant)
    except msgspec.ValidationError as error:
        raise ValueError(f"the {JOB_TENANT_HEADER} header is not a job's tenant: {error}") from None
    except msgspec.DecodeError as error:
        raise ValueError(f"the {JOB_TENANT_HEADER} header is not JSON: {error}") from None
    if not found.weight > 0 or not found.name:
        raise ValueError(
            f"the {JOB_TENANT_HEADER} header needs a tenant name and a positive weight, got "
            f"{found.name!r} and {found.weight}"
        )
    return found.tenant()
