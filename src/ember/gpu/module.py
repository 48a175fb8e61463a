"""Loading compiled kernels: the shipped cubin for the device's SM, else the PTX through the
driver's JIT compiler.

Artifacts are named `<family>.sm_<XY>.cubin` and `<family>.compute_<XY>.ptx`
(scripts/build_kernels.py writes them with these names).

EMBER_PROGRAMMATIC_LAUNCH=0 turns programmatic dependent launches off (to measure what they
save, or to rule them out when debugging).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ember.errors import CudaError
from ember.gpu.device import Device
from ember.gpu.driver import api, call, check
from ember.gpu.handle import Handle
from ember.gpu.launch import Kernel, Param, describe, param_layout

# Ampere (A100, A10/RTX 30xx), Ada (L4/RTX 40xx) and Hopper (H100/H200) machine code ships;
# newer GPUs JIT the PTX, which is built for the oldest of them so that it runs on all.
SHIPPED_SMS: Final = (80, 86, 89, 90)
PTX_SM: Final = 80
# Programmatic dependent launch (griddepcontrol) exists from Hopper on.
PROGRAMMATIC_SM: Final = 90

# ELF (cubin) and fatbin headers; any other image is PTX text.
_BINARY_MAGICS: Final = (b"\x7fELF", b"\x50\xed\x55\xba")


def cubin_filename(family: str, sm: int) -> str:
    return f"{family}.sm_{sm}.cubin"


def ptx_filename(family: str) -> str:
    return f"{family}.compute_{PTX_SM}.ptx"


def _cubin_sm(path: Path) -> int:
    """The SM of a `<family>.sm_<XY>.cubin` artifact; 0 for PTX."""
    suffix = path.name.rsplit(".", 2)
    if len(suffix) == 3 and suffix[2] == "cubin" and suffix[1].startswith("sm_"):
        return int(suffix[1].removeprefix("sm_"))
    return 0


def select_image(bin_dir: Path, family: str, compute_capability: tuple[int, int]) -> Path:
    """The artifact a device of `compute_capability` should load.

    A cubin runs on its own major version at the same or a higher minor one (sm_86 code on an
    sm_87 device), never across major versions; anything else needs the PTX.
    """
    major, minor = compute_capability
    sm = major * 10 + minor
    if sm < PTX_SM:
        raise CudaError(
            f"GPU with compute capability {major}.{minor} is too old: Ember's kernels need "
            f"{PTX_SM // 10}.{PTX_SM % 10} (Ampere) or newer"
        )
    compatible = [s for s in SHIPPED_SMS if s // 10 == major and s % 10 <= minor]
    for candidate in sorted(compatible, reverse=True):
        path = bin_dir / cubin_filename(family, candidate)
        if path.is_file():
            return path
    ptx = bin_dir / ptx_filename(family)
    if ptx.is_file():
        return ptx
    raise CudaError(
        f"no kernel image for '{family}' on sm_{sm} in {bin_dir}: "
        "run python3 scripts/build_kernels.py"
    )


class Module(Handle):
    """A loaded cubin or PTX image in the current context; unload it before the context goes."""

    __slots__ = ("programmatic", "source")
    RELEASED, DRIVER_RELEASE = "unloaded", "cuModuleUnload"

    def __init__(self, handle: Any, source: str, *, programmatic: bool = False) -> None:
        super().__init__(handle)  # CUmodule
        self.source = source
        # Whether its kernels are launched as programmatic dependents (see Kernel).
        self.programmatic = programmatic

    @classmethod
    def load(
        cls, bin_dir: Path, family: str, device: Device, *, awaits_prior_grid: bool = False
    ) -> Module:
        """`awaits_prior_grid`: every kernel of the family waits for the prior grid first
        (common.cuh's await_prior_grid). Its kernels are then launched as programmatic
        dependents where the image is sm_90+ machine code; PTX built for an older SM compiles
        the wait out, so it never gets the attribute."""
        path = select_image(bin_dir, family, device.compute_capability)
        module = cls.from_image(path.read_bytes(), source=str(path))
        module.programmatic = (
            awaits_prior_grid
            and _cubin_sm(path) >= PROGRAMMATIC_SM
            and os.environ.get("EMBER_PROGRAMMATIC_LAUNCH", "1") != "0"
        )
        return module

    @classmethod
    def from_image(cls, image: bytes, *, source: str = "<memory>") -> Module:
        """Load a cubin, fatbin or PTX image; PTX is compiled by the driver's JIT here."""
        if not image.startswith(_BINARY_MAGICS):
            # PTX is read as a C string: without the NUL the driver reads past the buffer.
            image = image + b"\0"
        try:
            handle = call(api().cuModuleLoadData, image)
        except CudaError as exc:
            raise CudaError(
                f"loading kernels from {source}: {exc}",
                call=exc.call,
                code=exc.code,
                name=exc.name,
                text=exc.text,
            ) from exc
        return cls(handle, source)

    def function(self, name: str, signature: Sequence[Param]) -> Kernel:
        """The kernel `name` (its `extern "C"` name) with its parameter types, checked against
        the image's own parameter list (CudaError on any difference in count, offset or size)."""
        self._check_alive()
        handle = call(api().cuModuleGetFunction, self.handle, name.encode())
        check_image_params(handle, f"kernel {name} of {self.source}", signature)
        return Kernel(handle, name, signature, programmatic=self.programmatic)

    def unload(self) -> None:
        self._release_once()

    def _name(self) -> str:
        return f"module {self.source}"


def check_image_params(function: Any, what: str, signature: Sequence[Param]) -> None:
    """CudaError unless the loaded kernel `function` takes exactly `signature`'s parameters, at
    the same offsets and of the same sizes (cuFuncGetParamInfo, CUDA 12.4+; bindings without
    it skip the check). A kernel whose parameters changed without its signature in Ember
    changing would otherwise read every later argument from the wrong bytes."""
    cu = api()
    param_info = getattr(cu, "cuFuncGetParamInfo", None)
    if param_info is None:
        return
    expected = param_layout(signature)
    fix = "rebuild the kernels (python3 scripts/build_kernels.py) or fix the signature"
    for index in range(len(expected) + 1):
        err, offset, size = param_info(function, index)
        past_end = err == cu.CUresult.CUDA_ERROR_INVALID_VALUE
        if not past_end:
            check("cuFuncGetParamInfo", err)
        if index == len(expected):
            if past_end:
                return
            raise CudaError(
                f"{what} takes more than the {index} parameters of its signature in the image "
                f"(parameter {index}: {size} bytes at offset {offset}): {fix}"
            )
        if past_end:
            raise CudaError(
                f"{what} takes {index} parameters in the image, but its signature has "
                f"{len(expected)} ({', '.join(describe(p) for p in signature)}): {fix}"
            )
        if (int(offset), int(size)) != expected[index]:
            want_offset, want_size = expected[index]
            raise CudaError(
                f"{what}: parameter {index} is {size} bytes at offset {offset} in the image, "
                f"but {describe(signature[index])} ({want_size} bytes at offset {want_offset}) "
                "in its signature: " + fix
            )
