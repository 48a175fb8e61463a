"""Several GPUs in one process: a context per device, peer access, copies between them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.errors import CudaError
from ember.gpu.context import Context
from ember.gpu.device import Device
from ember.gpu.driver import api, call, check
from ember.gpu.handle import Handle
from ember.gpu.memory import DeviceBuffer
from ember.gpu.stream import Stream


@dataclass(slots=True, repr=False)
class PeerGroup(Handle):
    """The primary contexts of a set of GPUs, with peer access enabled between every ordered
    pair for which cuDeviceCanAccessPeer says yes (over NVLink or PCIe P2P)."""

    contexts: tuple[Context, ...]
    peer_access: frozenset[tuple[int, int]]  # (from ordinal, to ordinal)

    RELEASED = "closed"

    def __post_init__(self) -> None:
        Handle.__init__(self)

    @classmethod
    def open(cls, ordinals: Sequence[int] | None = None) -> PeerGroup:
        devices = (
            Device.all() if ordinals is None else [Device.get(ordinal) for ordinal in ordinals]
        )
        contexts = tuple(device.retain_primary_context() for device in devices)
        enabled: set[tuple[int, int]] = set()
        cu = api()
        for ctx in contexts:
            for peer in contexts:
                if peer is ctx or not ctx.device.can_access_peer(peer.device):
                    continue
                ctx.make_current()
                (err,) = cu.cuCtxEnablePeerAccess(peer.handle, 0)
                # Peer access is per context pair and process-wide: another PeerGroup (or
                # another library) may have enabled it already.
                if err != cu.CUresult.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED:
                    check("cuCtxEnablePeerAccess", err)
                enabled.add((ctx.device.ordinal, peer.device.ordinal))
        return cls(contexts, frozenset(enabled))

    def context(self, ordinal: int) -> Context:
        for ctx in self.contexts:
            if ctx.device.ordinal == ordinal:
                return ctx
        raise ValueError(f"GPU {ordinal} is not in this group")

    def has_peer_access(self, src: int, dst: int) -> bool:
        return (src, dst) in self.peer_access

    def copy(
        self,
        dst: DeviceBuffer,
        dst_ordinal: int,
        src: DeviceBuffer,
        src_ordinal: int,
        nbytes: int | None = None,
        stream: Stream | None = None,
    ) -> None:
        """Copy between GPUs: direct with peer access, staged through the host without it."""
        count = src.nbytes if nbytes is None else nbytes
        if count > src.nbytes or count > dst.nbytes:
            raise ValueError(f"cannot copy {count} bytes from {src.nbytes} into {dst.nbytes}")
        cu = api()
        dst_ctx = self.context(dst_ordinal).handle
        src_ctx = self.context(src_ordinal).handle
        if stream is None:
            call(cu.cuMemcpyPeer, dst.ptr, dst_ctx, src.ptr, src_ctx, count)
        else:
            call(cu.cuMemcpyPeerAsync, dst.ptr, dst_ctx, src.ptr, src_ctx, count, stream.handle)

    def close(self) -> None:
        """Release the contexts. Peer access is left on: it belongs to the context pair, which
        other users of the primary contexts may share, and goes when the contexts do."""
        self._release_once()

    def _release(self) -> None:
        errors: list[CudaError] = []
        for ctx in self.contexts:
            try:
                ctx.release()
            except CudaError as exc:  # release the others before reporting
                errors.append(exc)
        if errors:
            raise errors[0]

    def _name(self) -> str:
        return f"peer group of GPUs {[ctx.device.ordinal for ctx in self.contexts]}"
