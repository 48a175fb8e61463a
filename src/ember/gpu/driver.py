"""The CUDA driver: loading it, initialising it, and turning its result codes into CudaError.

Every other module in `ember.gpu` reaches the driver through `api()` and checks each result with
`call()` (or, on the few hot paths, with `error_from_result()` directly). This module imports
without cuda-bindings installed, so that `cuda_available()` can say why CUDA is not usable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ember.errors import CudaError, CudaUnavailableError

try:
    from cuda.bindings import driver as _driver

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # the CPU backend must still work without the package
    _driver = None
    _IMPORT_ERROR = str(exc)

# Ember's kernels are built with nvcc 13.0: its PTX (ISA 9.0) and cubins load only on a driver
# that supports CUDA 13.0 (R580 or newer). cuDriverGetVersion encodes 13.0 as 13000.
MIN_DRIVER_VERSION: Final = 13000


# cuInit failures with a known cause, by CUresult name, and what to do about each.
_INIT_FAILURES: Final = {
    "CUDA_ERROR_NO_DEVICE": (
        "the NVIDIA driver is installed but sees no GPU (check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES), or run with --device cpu"
    ),
    "CUDA_ERROR_STUB_LIBRARY": (
        "the libcuda.so found is the CUDA toolkit's stub, not the NVIDIA driver: install the "
        "driver, or take the toolkit's stubs/ folder off LD_LIBRARY_PATH"
    ),
    "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH": (
        "the NVIDIA driver's library (libcuda.so) and kernel module are different versions: "
        "reinstall the driver or reboot"
    ),
    "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE": (
        "the CUDA forward-compatibility driver in use does not support this GPU: install a "
        "native NVIDIA driver R580 or newer"
    ),
}


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """What the initialised driver reports about itself."""

    version: int
    device_count: int

    @property
    def cuda_version(self) -> str:
        return format_driver_version(self.version)


def format_driver_version(version: int) -> str:
    return f"{version // 1000}.{(version % 1000) // 10}"


def api() -> Any:
    """The `cuda.bindings.driver` module; CudaUnavailableError if cuda-bindings is missing."""
    if _driver is None:
        raise CudaUnavailableError(
            "the cuda-bindings package is not importable "
            f"({_IMPORT_ERROR}); install it with: pip install 'ember-llm[cuda]'"
        )
    return _driver


def _result_name(cu: Any, code: Any) -> str:
    try:
        return str(cu.CUresult(code).name)
    except ValueError:  # a code newer than these bindings
        return f"CUresult {int(code)}"


def error_from_result(call_name: str, code: Any) -> CudaError:
    """A CudaError for a failed driver call, with the driver's own name and text for `code`."""
    cu = api()
    err, name = cu.cuGetErrorName(code)
    name_text = name.decode() if not err and name else f"CUresult {int(code)}"
    err, text = cu.cuGetErrorString(code)
    description = text.decode() if not err and text else "no description from the driver"
    return CudaError(
        f"{call_name} failed: {name_text} ({description})",
        call=call_name,
        code=int(code),
        name=name_text,
        text=description,
    )


def check(call_name: str, code: Any) -> None:
    """Raise CudaError if `code` (a CUresult returned by `call_name`) is not CUDA_SUCCESS."""
    if code:  # CUresult is an int enum and CUDA_SUCCESS is 0
        raise error_from_result(call_name, code)


def call(function: Callable[..., tuple[Any, ...]], *args: Any) -> Any:
    """Call a driver function, raise CudaError unless it succeeded, and return its outputs.

    cuda-bindings returns ``(CUresult, *outputs)``: this returns None, the one output, or the
    tuple of outputs.
    """
    result = function(*args)
    if result[0]:  # CUresult is an int enum and CUDA_SUCCESS is 0
        raise error_from_result(function.__name__, result[0])
    if len(result) == 1:
        return None
    if len(result) == 2:
        return result[1]
    return result[1:]


def init() -> DriverInfo:
    """Load and initialise the driver; CudaUnavailableError with a fix-it message if unusable.

    cuInit is idempotent and cheap, so this is safe to call from every entry point.
    """
    cu = api()
    try:
        (err,) = cu.cuInit(0)
    except (RuntimeError, OSError) as exc:
        # cuda-bindings loads libcuda.so lazily, on the first call; cuda.pathfinder's
        # DynamicLibNotFoundError (a RuntimeError) or a dlopen OSError means no driver.
        raise CudaUnavailableError(
            "libcuda.so (the NVIDIA driver) could not be loaded: install the NVIDIA driver "
            f"(R580 or newer), or run with --device cpu ({exc})"
        ) from exc
    known = _INIT_FAILURES.get(_result_name(cu, err))
    if known is not None:
        raise CudaUnavailableError(known)
    if err:
        cause = error_from_result("cuInit", err)
        raise CudaUnavailableError(
            f"the NVIDIA driver failed to initialise: {cause}",
            call=cause.call,
            code=cause.code,
            name=cause.name,
            text=cause.text,
        )
    version = int(call(cu.cuDriverGetVersion))
    if version < MIN_DRIVER_VERSION:
        raise CudaUnavailableError(
            f"the NVIDIA driver supports CUDA {format_driver_version(version)}, but Ember's "
            f"kernels need CUDA {format_driver_version(MIN_DRIVER_VERSION)} "
            "(driver R580 or newer); upgrade the driver or run with --device cpu"
        )
    count = int(call(cu.cuDeviceGetCount))
    if count == 0:
        raise CudaUnavailableError("the NVIDIA driver reports no GPU; run with --device cpu")
    return DriverInfo(version=version, device_count=count)


def cuda_available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and why not (or what was found) as a sentence."""
    try:
        info = init()
    except CudaError as exc:
        return False, str(exc)
    return True, f"CUDA driver {info.cuda_version} with {info.device_count} GPU(s)"
