"""ember.gpu.driver: availability, the messages for each way CUDA can be missing, errors."""

from __future__ import annotations

import enum
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from ember.errors import CudaError
from ember.gpu import Context, Device, DeviceBuffer, cuda_available, driver


class FakeResult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_STUB_LIBRARY = 34
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803


def fake_driver(init: Any, version: int = 13000, count: int = 1) -> SimpleNamespace:
    """A stand-in for cuda.bindings.driver: these tests run where cuda-bindings is absent."""
    return SimpleNamespace(
        CUresult=FakeResult,
        cuInit=init,
        cuDriverGetVersion=lambda: (FakeResult.CUDA_SUCCESS, version),
        cuDeviceGetCount=lambda: (FakeResult.CUDA_SUCCESS, count),
        cuGetErrorName=lambda code: (FakeResult.CUDA_SUCCESS, FakeResult(code).name.encode()),
        cuGetErrorString=lambda code: (FakeResult.CUDA_SUCCESS, b"fake description"),
    )


def test_cuda_available_always_gives_a_reason() -> None:
    ok, reason = cuda_available()
    assert isinstance(ok, bool)
    assert reason


def test_missing_bindings_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "_driver", None)
    monkeypatch.setattr(driver, "_IMPORT_ERROR", "No module named 'cuda'")
    ok, reason = cuda_available()
    assert not ok
    assert "cuda-bindings" in reason


def test_missing_libcuda_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(flags: int) -> tuple[FakeResult]:
        raise RuntimeError('"cuda" is an NVIDIA driver library and can only be found ...')

    monkeypatch.setattr(driver, "_driver", fake_driver(no_library))
    ok, reason = cuda_available()
    assert not ok
    assert "libcuda.so" in reason


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (FakeResult.CUDA_ERROR_NO_DEVICE, "sees no GPU"),
        (FakeResult.CUDA_ERROR_STUB_LIBRARY, "stub"),
        (FakeResult.CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, "kernel module"),
        (FakeResult.CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE"),
    ],
)
def test_init_failures_are_explained(
    monkeypatch: pytest.MonkeyPatch, code: FakeResult, words: str
) -> None:
    monkeypatch.setattr(driver, "_driver", fake_driver(lambda flags: (code,)))
    ok, reason = cuda_available()
    assert not ok
    assert words in reason


def test_old_driver_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    success = (FakeResult.CUDA_SUCCESS,)
    monkeypatch.setattr(driver, "_driver", fake_driver(lambda flags: success, version=12040))
    ok, reason = cuda_available()
    assert not ok
    assert "CUDA 12.4" in reason
    assert "13.0" in reason


def test_no_gpu_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    success = (FakeResult.CUDA_SUCCESS,)
    monkeypatch.setattr(driver, "_driver", fake_driver(lambda flags: success, count=0))
    assert cuda_available() == (False, "the NVIDIA driver reports no GPU; run with --device cpu")


def test_call_raises_with_the_driver_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "_driver", fake_driver(lambda flags: (0,)))

    def failing_alloc(nbytes: int) -> tuple[FakeResult, int]:
        return FakeResult.CUDA_ERROR_INVALID_VALUE, 0

    failing_alloc.__name__ = "cuMemAlloc"
    with pytest.raises(CudaError) as caught:
        driver.call(failing_alloc, 16)
    assert caught.value.call == "cuMemAlloc"
    assert caught.value.name == "CUDA_ERROR_INVALID_VALUE"
    assert caught.value.code == 1
    assert caught.value.text == "fake description"


@pytest.mark.gpu
def test_device_properties(device: Device) -> None:
    assert Device.count() >= 1
    assert device.name
    assert device.total_memory > 1 << 30
    assert device.compute_capability >= (8, 0)
    assert device.multiprocessor_count > 0
    assert device.l2_cache_bytes > 0
    assert device.max_shared_memory_per_block_optin >= 48 * 1024
    print(
        f"\n{device.name}: sm_{device.sm}, {device.multiprocessor_count} SMs, "
        f"{device.total_memory / 2**30:.1f} GiB, L2 {device.l2_cache_bytes / 2**20:.0f} MiB, "
        f"driver CUDA {driver.init().cuda_version}"
    )
    with pytest.raises(ValueError, match="does not exist"):
        Device.get(Device.count())


@pytest.mark.gpu
def test_driver_errors_carry_name_and_text(context: Context) -> None:
    with pytest.raises(CudaError) as caught:
        DeviceBuffer.alloc(1 << 50)  # a petabyte
    assert caught.value.name == "CUDA_ERROR_OUT_OF_MEMORY"
    assert caught.value.call == "cuMemAlloc"
    assert caught.value.text
    assert "CUDA_ERROR_OUT_OF_MEMORY" in str(caught.value)


@pytest.mark.gpu
def test_context_memory_info(context: Context) -> None:
    free, total = context.memory_info()
    assert 0 < free <= total


def test_driver_warmup_without_a_usable_driver_is_harmless() -> None:
    # Here (no GPU) the thread meets the missing driver and gives up quietly; on a GPU
    # machine it retains the primary context and hand_over() gives it back.
    code = (
        "from ember.gpu import warmup\n"
        "warmup.start(); warmup.start(); warmup.hand_over(); warmup.hand_over()\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.gpu
def test_driver_warmup_hands_its_context_over() -> None:
    # A fresh process, so that no other reference to the primary context exists.
    code = """
from cuda.bindings import driver as cu
from ember.gpu import Device, DeviceBuffer, warmup

def active(device):
    err, flags, state = cu.cuDevicePrimaryCtxGetState(device.handle)
    return state

warmup.start()
device = Device.get(0)
context = device.retain_primary_context()
warmup.hand_over()  # the warm-up's reference goes; ours keeps the context alive
assert active(device) == 1
context.make_current()
buffer = DeviceBuffer.alloc(1 << 20)
buffer.free()
context.release()
assert active(device) == 0  # no reference left behind by the warm-up
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
