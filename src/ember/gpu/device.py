"""A GPU as the driver describes it: identity, limits, and the way to its primary context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.gpu.driver import api, call, init

if TYPE_CHECKING:
    from ember.gpu.context import Context


@dataclass(frozen=True, slots=True)
class Device:
    """One GPU's properties, read once when the Device is made (`Device.get`)."""

    ordinal: int
    handle: Any  # CUdevice
    name: str
    total_memory: int
    compute_capability: tuple[int, int]
    multiprocessor_count: int
    l2_cache_bytes: int
    max_shared_memory_per_block_optin: int

    @staticmethod
    def count() -> int:
        return init().device_count

    @classmethod
    def get(cls, ordinal: int = 0) -> Device:
        count = init().device_count
        if not 0 <= ordinal < count:
            raise ValueError(f"GPU {ordinal} does not exist: the driver sees {count} GPU(s)")
        cu = api()
        handle = call(cu.cuDeviceGet, ordinal)
        attr = cu.CUdevice_attribute

        def attribute(which: Any) -> int:
            return int(call(cu.cuDeviceGetAttribute, which, handle))

        raw_name: bytes = call(cu.cuDeviceGetName, 256, handle)
        return cls(
            ordinal=ordinal,
            handle=handle,
            name=raw_name.split(b"\0", 1)[0].decode(),
            total_memory=int(call(cu.cuDeviceTotalMem, handle)),
            compute_capability=(
                attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            ),
            multiprocessor_count=attribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            l2_cache_bytes=attribute(attr.CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE),
            max_shared_memory_per_block_optin=attribute(
                attr.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
            ),
        )

    @classmethod
    def all(cls) -> list[Device]:
        return [cls.get(ordinal) for ordinal in range(cls.count())]

    @property
    def sm(self) -> int:
        """The compute capability as nvcc spells it: (9, 0) -> 90."""
        major, minor = self.compute_capability
        return major * 10 + minor

    def can_access_peer(self, other: Device) -> bool:
        return bool(call(api().cuDeviceCanAccessPeer, self.handle, other.handle))

    def retain_primary_context(self) -> Context:
        from ember.gpu.context import Context

        return Context.retain_primary(self)
