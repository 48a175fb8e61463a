"""ember.gpu.launch: argument packing (CPU) and launches with every argument type (GPU)."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ember.errors import CudaError
from ember.gpu import Arg, ArgPack, Context, Device, DeviceBuffer, Kernel, Module, Stream
from ember.gpu.launch import StructArg, param_layout

FIXTURES = Path(__file__).parent / "fixtures"
SCALARS = (Arg.I32, Arg.I64, Arg.U32, Arg.F32, Arg.PTR)


def test_arg_pack_puts_each_value_in_its_own_slot() -> None:
    pack = ArgPack(SCALARS)
    address = pack.pack((-5, -(1 << 40), 0xFFFFFFFF, 1.5, 0xDEAD_BEEF_0000))
    raw = pack.slot_bytes()
    assert struct.unpack_from("<i", raw, 0)[0] == -5
    assert struct.unpack_from("<q", raw, 8)[0] == -(1 << 40)
    assert struct.unpack_from("<I", raw, 16)[0] == 0xFFFFFFFF
    assert struct.unpack_from("<f", raw, 24)[0] == 1.5
    assert struct.unpack_from("<Q", raw, 32)[0] == 0xDEAD_BEEF_0000
    # kernelParams[i] must point at slot i.
    pointers = [int(p or 0) for p in (ctypes.c_void_p * 5).from_address(address)]
    assert [p - pointers[0] for p in pointers] == [0, 8, 16, 24, 32]


def test_arg_pack_rejects_wrong_arguments() -> None:
    pack = ArgPack((Arg.PTR, Arg.I32))
    with pytest.raises(ValueError, match=r"\(PTR, I32\)"):
        pack.pack((1,))
    with pytest.raises(ValueError):
        pack.pack((1, 1 << 40))  # does not fit an int32
    with pytest.raises(ValueError):
        pack.pack((-1, 0))  # a pointer is unsigned
    assert ArgPack(()).address == 0  # no arguments: kernelParams is NULL


def test_arg_pack_gives_a_struct_its_bytes_in_consecutive_slots() -> None:
    signature = (Arg.I32, StructArg("pair", 12, 4), Arg.PTR)
    pack = ArgPack(signature)
    address = pack.pack((7, b"abcdefghijkl", 0xBEEF))
    raw = pack.slot_bytes()
    assert struct.unpack_from("<i", raw, 0)[0] == 7
    assert raw[8:20] == b"abcdefghijkl"
    assert struct.unpack_from("<Q", raw, 24)[0] == 0xBEEF
    pointers = [int(p or 0) for p in (ctypes.c_void_p * 3).from_address(address)]
    assert [p - pointers[0] for p in pointers] == [0, 8, 24]
    # Where the kernel's parameter buffer holds them: each at its own alignment.
    assert param_layout(signature) == [(0, 4), (4, 12), (16, 8)]


@pytest.fixture(scope="module")
def store_scalars(context: Context) -> Iterator[Kernel]:
    # Loaded from PTX on purpose: this also exercises the driver's JIT path.
    with Module.from_image((FIXTURES / "scalar_args.ptx").read_bytes(), source="test") as module:
        yield module.function("store_scalars", SCALARS)


@pytest.mark.gpu
def test_every_argument_type_reaches_the_kernel(store_scalars: Kernel, stream: Stream) -> None:
    rng = np.random.default_rng(5)
    for _ in range(5):
        i32 = int(rng.integers(-(2**31), 2**31))
        i64 = int(rng.integers(-(2**63), 2**63))
        u32 = int(rng.integers(0, 2**32))
        f32 = float(np.float32(rng.standard_normal()))
        with DeviceBuffer.alloc(32) as out:
            out.memset_d8(0xCC)
            store_scalars.launch((1, 1, 1), (1, 1, 1), i32, i64, u32, f32, out.ptr, stream=stream)
            stream.synchronize()
            got = out.to_numpy(np.uint64)
        assert got[0].astype(np.int64) == i32
        assert got[1].astype(np.int64) == i64
        assert got[2] == u32
        assert np.uint32(got[3]).view(np.float32) == np.float32(f32)


@pytest.mark.gpu
def test_invalid_launch_gives_the_driver_error(store_scalars: Kernel) -> None:
    with DeviceBuffer.alloc(32) as out, pytest.raises(CudaError) as caught:
        store_scalars.launch((1, 1, 1), (4096, 1, 1), 0, 0, 0, 0.0, out.ptr)  # > 1024 threads
    assert caught.value.name == "CUDA_ERROR_INVALID_VALUE"
    assert caught.value.call == "cuLaunchKernel(store_scalars)"


@pytest.mark.gpu
def test_dynamic_shared_memory_limit(
    store_scalars: Kernel, device: Device, context: Context
) -> None:
    big = min(100 * 1024, device.max_shared_memory_per_block_optin)
    with DeviceBuffer.alloc(32) as out:
        with pytest.raises(CudaError) as caught:
            store_scalars.launch((1, 1, 1), (1, 1, 1), 0, 0, 0, 0.0, out.ptr, shared_mem=big)
        assert caught.value.name == "CUDA_ERROR_INVALID_VALUE"
        store_scalars.set_max_dynamic_shared_memory(big)
        assert store_scalars.attribute("MAX_DYNAMIC_SHARED_SIZE_BYTES") == big
        store_scalars.launch((1, 1, 1), (1, 1, 1), 0, 0, 0, 0.0, out.ptr, shared_mem=big)
        context.synchronize()
    assert store_scalars.attribute("NUM_REGS") > 0
