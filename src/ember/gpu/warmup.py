"""Start the CUDA driver on a thread while the process is still importing.

`cuInit` and the creation of the device's primary context take ~0.2 s on an H100 host and
release the GIL, while the imports a command needs before it can load a model (NumPy, gguf,
tokenizers, jinja2: ~0.7 s) hold it. A command that will probably use the GPU calls `start()`
first thing; the backend's own start-up then finds the driver initialised and the context
made, retains the context itself and calls `hand_over()`, which drops the warm-up's reference.
Failures are ignored here: the real start-up meets them again and explains them.

This module imports nothing but `threading`, so calling it costs the command nothing.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_thread: threading.Thread | None = None
_held: tuple[Any, Any] | None = None  # (the driver module, CUdevice) whose context we retain


def start(ordinal: int = 0) -> None:
    """Begin initialising the driver and device `ordinal`'s primary context (once)."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(
                target=_warm, args=(ordinal,), name="ember-cuda-warmup", daemon=True
            )
            _thread.start()


def hand_over() -> None:
    """Wait for the warm-up, then release its reference to the primary context. Call it after
    retaining the context: released first, the context would be destroyed and made again."""
    global _held
    thread = _thread
    if thread is None:
        return
    thread.join()
    with _lock:
        held, _held = _held, None
    if held is not None:
        driver, device = held
        driver.cuDevicePrimaryCtxRelease(device)


def _warm(ordinal: int) -> None:
    global _held
    try:
        from cuda.bindings import driver

        (error,) = driver.cuInit(0)
        if error:
            return
        error, device = driver.cuDeviceGet(ordinal)
        if error:
            return
        error, _ = driver.cuDevicePrimaryCtxRetain(device)
        if not error:
            with _lock:
                _held = (driver, device)
    except Exception:  # no bindings, no driver library: `--device` handling says why
        return
