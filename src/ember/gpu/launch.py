"""Launching a kernel: typed argument packing and cuLaunchKernel (cuLaunchKernelEx for kernels
launched as programmatic dependents, see Kernel).

The driver reads kernel arguments through `void** kernelParams`, one pointer per argument to
where its value lies. Each Kernel builds that pointer array once, over a fixed block of 8-byte
slots (a struct passed by value takes as many as its bytes need), and a launch only writes the
new values into the slots with one `struct.pack_into` and passes the array's address as an int.
That is the cheapest form cuda-bindings accepts: its `((values), (ctypes types))` tuple form
allocates and converts per argument on every call.

A kernel's signature is what its .cu declares (ember.kernels.interface reads it from the
build's manifest), and Module.function checks it against the loaded image.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from ember.gpu.driver import api, call, error_from_result
from ember.gpu.stream import Stream

Dim3 = tuple[int, int, int]

# Every argument gets its own 8-byte-aligned slots: each scalar slot is then aligned for any
# scalar the driver may copy from it, whatever the kernel's own parameter layout.
_SLOT_BYTES: Final = 8


class Arg(Enum):
    """A scalar kernel parameter's C type, named as interface.cuh's EMBER_EXPORT_PARAMS names
    it in manifest.json."""

    PTR = "pointer"  # a device address, an int (DeviceBuffer.ptr)
    I32 = "int32"
    U32 = "uint32"
    I64 = "int64"
    U64 = "uint64"
    F32 = "float32"

    @property
    def size(self) -> int:
        """Bytes in the kernel's parameter buffer, which is also the alignment there."""
        return _ARG_FORMATS[self][1]

    @property
    def slot_format(self) -> str:
        """The `struct` format that writes it into its 8-byte slot."""
        return _ARG_FORMATS[self][0]


_ARG_FORMATS: Final = {
    Arg.PTR: ("Q", 8),
    Arg.I32: ("i4x", 4),
    Arg.U32: ("I4x", 4),
    Arg.I64: ("q", 8),
    Arg.U64: ("Q", 8),
    Arg.F32: ("f4x", 4),
}


@dataclass(frozen=True, slots=True)
class StructArg:
    """A struct passed by value: its name, bytes and alignment. A launch passes its bytes (e.g.
    `bytes(a_ctypes_structure)`, built once per Launch); their length is checked against the
    kernel once, when its signature is, not per launch."""

    name: str
    size: int
    align: int

    @property
    def slot_format(self) -> str:
        pad = -self.size % _SLOT_BYTES
        return f"{self.size}s{pad}x" if pad else f"{self.size}s"


Param = Arg | StructArg
# What a launch passes for a parameter: an int (PTR and the integers), a float, a struct's bytes.
ArgValue = int | float | bytes


def param_layout(signature: Sequence[Param]) -> list[tuple[int, int]]:
    """(offset, size) of each parameter in the kernel's parameter buffer: each at its natural
    alignment, as the C ABI lays out arguments (and cuFuncGetParamInfo reports them)."""
    layout = []
    offset = 0
    for param in signature:
        align = param.align if isinstance(param, StructArg) else param.size
        offset += -offset % align
        layout.append((offset, param.size))
        offset += param.size
    return layout


def describe(param: Param) -> str:
    return f"struct {param.name}" if isinstance(param, StructArg) else param.name


class ArgPack:
    """The kernelParams array of one kernel signature, refilled in place for every launch.

    Not thread-safe: two threads launching through one ArgPack at once would mix values. The
    driver copies the values during cuLaunchKernel, so reuse right after a launch is safe.
    """

    __slots__ = ("_pack_into", "_pointers", "_slots", "address", "signature")

    def __init__(self, signature: Sequence[Param]) -> None:
        self.signature = tuple(signature)
        sizes = [-(-p.size // _SLOT_BYTES) * _SLOT_BYTES for p in self.signature]
        count = max(len(self.signature), 1)
        self._slots = (ctypes.c_uint64 * max(sum(sizes) // _SLOT_BYTES, 1))()
        base = ctypes.addressof(self._slots)
        starts = [base + sum(sizes[:i]) for i in range(len(sizes))] or [base]
        self._pointers = (ctypes.c_void_p * count)(*starts)
        self.address = ctypes.addressof(self._pointers) if self.signature else 0
        layout = "".join(p.slot_format for p in self.signature)
        self._pack_into = struct.Struct("<" + layout).pack_into

    def pack(self, args: tuple[ArgValue, ...]) -> int:
        """Write `args` into the slots; returns the kernelParams address."""
        try:
            self._pack_into(self._slots, 0, *args)
        except struct.error as exc:
            raise self.mismatch(args, exc) from exc
        return self.address

    def mismatch(self, args: tuple[ArgValue, ...], exc: struct.error) -> ValueError:
        expected = ", ".join(describe(p) for p in self.signature)
        return ValueError(f"kernel arguments {args!r} do not match ({expected}): {exc}")

    def slot_bytes(self) -> bytes:
        """The packed slots as bytes (for tests and debugging)."""
        return bytes(self._slots)


class Kernel:
    """A `__global__` function of a loaded Module, with its argument signature.

    Launch it from a thread whose current context is the one its module was loaded in.
    """

    __slots__ = (
        "_args",
        "_configs",
        "_launch",
        "_launch_ex",
        "_null_stream",
        "_pack_into",
        "_params",
        "_slots",
        "function",
        "name",
        "programmatic",
    )

    def __init__(
        self, function: Any, name: str, signature: Sequence[Param], *, programmatic: bool = False
    ) -> None:
        """`programmatic`: launch with programmatic stream serialization (sm_90+), which lets
        this kernel's blocks start while the previous kernel on the stream finishes. Only for
        kernels that wait for the prior grid before touching memory (`griddepcontrol.wait`,
        common.cuh's await_prior_grid); any other kernel would race with its predecessor."""
        cu = api()
        self.function = function  # CUfunction
        self.name = name
        self.programmatic = programmatic
        self._launch_ex = cu.cuLaunchKernelEx
        # CUlaunchConfig per (grid, block, shared memory, stream): building one costs more than
        # the launch itself, and a forward pass reuses a handful.
        self._configs: dict[tuple[Dim3, Dim3, int, int], Any] = {}
        self._args = ArgPack(signature)
        # Bound here so that a launch does no attribute lookups through ArgPack (measured:
        # each Python-level call or lookup saved is ~0.1 µs of a ~5 µs launch on an H100 host).
        self._pack_into = self._args._pack_into
        self._slots = self._args._slots
        self._params = self._args.address
        self._launch = cu.cuLaunchKernel
        self._null_stream = cu.CUstream(0)

    @property
    def signature(self) -> tuple[Param, ...]:
        return self._args.signature

    def launch(
        self,
        grid: Dim3,
        block: Dim3,
        *args: ArgValue,
        stream: Stream | None = None,
        shared_mem: int = 0,
    ) -> None:
        try:
            self._pack_into(self._slots, 0, *args)
        except struct.error as exc:
            raise self._args.mismatch(args, exc) from exc
        handle = self._null_stream if stream is None else stream.handle
        if self.programmatic:
            key = (grid, block, shared_mem, int(handle))
            config = self._configs.get(key)
            if config is None:
                config = self._configs[key] = _programmatic_config(grid, block, shared_mem, handle)
            (err,) = self._launch_ex(config, self.function, self._params, 0)
            if err:
                raise error_from_result(f"cuLaunchKernelEx({self.name})", err)
            return
        (err,) = self._launch(
            self.function,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_mem,
            handle,
            self._params,
            0,
        )
        if err:
            raise error_from_result(f"cuLaunchKernel({self.name})", err)

    def attribute(self, which: str) -> int:
        """A CU_FUNC_ATTRIBUTE_* value, e.g. attribute("NUM_REGS")."""
        cu = api()
        attr = getattr(cu.CUfunction_attribute, f"CU_FUNC_ATTRIBUTE_{which}")
        return int(call(cu.cuFuncGetAttribute, attr, self.function))

    def set_max_dynamic_shared_memory(self, nbytes: int) -> None:
        """Allow launches with up to `nbytes` of dynamic shared memory; above 48 KiB the driver
        refuses a launch unless this limit was raised first."""
        cu = api()
        attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        call(cu.cuFuncSetAttribute, self.function, attr, nbytes)


def _programmatic_config(grid: Dim3, block: Dim3, shared_mem: int, stream: Any) -> Any:
    cu = api()
    attribute = cu.CUlaunchAttribute()
    attribute.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attribute.value.programmaticStreamSerializationAllowed = 1
    config = cu.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid
    config.blockDimX, config.blockDimY, config.blockDimZ = block
    config.sharedMemBytes = shared_mem
    config.hStream = stream
    config.attrs = [attribute]
    config.numAttrs = 1
    return config


class Launch:
    """One kernel launch with its grid and arguments fixed: what a wrapper returns after
    checking shapes and dtypes once, so that a forward pass (or a graph capture) replays a
    list of launches without re-checking anything."""

    __slots__ = ("args", "block", "grid", "kernel", "shared_mem")

    def __init__(
        self,
        kernel: Kernel,
        grid: Dim3,
        block: Dim3,
        args: tuple[ArgValue, ...],
        shared_mem: int = 0,
    ) -> None:
        self.kernel = kernel
        self.grid = grid
        self.block = block
        self.args = args
        self.shared_mem = shared_mem

    def __call__(self, stream: Stream | None = None) -> None:
        self.kernel.launch(
            self.grid, self.block, *self.args, stream=stream, shared_mem=self.shared_mem
        )

    def __repr__(self) -> str:
        return f"Launch({self.kernel.name}, grid={self.grid}, block={self.block})"
