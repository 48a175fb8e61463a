"""ember.gpu.peer: a context per GPU, peer access, copies between GPUs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ember.gpu import Device, DeviceBuffer, PeerGroup, Stream

pytestmark = pytest.mark.gpu


def test_peer_group_copies_between_every_pair() -> None:
    host = np.random.default_rng(8).standard_normal(1 << 18).astype(np.float32)
    with PeerGroup.open() as group:
        ordinals = [ctx.device.ordinal for ctx in group.contexts]
        assert ordinals == list(range(Device.count()))
        print(f"\n{len(ordinals)} GPU(s); peer access: {sorted(group.peer_access) or 'none'}")
        buffers = {}
        for ctx in group.contexts:
            ctx.make_current()
            buffers[ctx.device.ordinal] = DeviceBuffer.alloc(host.nbytes)
        group.context(ordinals[0]).make_current()
        buffers[ordinals[0]].copy_from_host(host)
        # A ring 0 -> 1 -> ... -> 0 (with one GPU, a copy onto itself).
        ring = [*ordinals, ordinals[0]]
        for src, dst in itertools.pairwise(ring):
            group.context(src).make_current()
            with Stream.create() as stream:
                if src != dst:
                    group.copy(buffers[dst], dst, buffers[src], src, stream=stream)
                else:
                    with DeviceBuffer.alloc(host.nbytes) as scratch:
                        group.copy(scratch, dst, buffers[src], src, stream=stream)
                        buffers[src].memset_d8(0, stream)
                        group.copy(buffers[dst], dst, scratch, src, stream=stream)
                        stream.synchronize()
                stream.synchronize()
        group.context(ordinals[0]).make_current()
        np.testing.assert_array_equal(buffers[ordinals[0]].to_numpy(np.float32), host)
        for ordinal, buffer in buffers.items():
            group.context(ordinal).make_current()
            buffer.free()
        with pytest.raises(ValueError, match="not in this group"):
            group.context(99)
