"""Thin typed layer over the CUDA driver API (cuda.bindings.driver); knows nothing of models.

Every module imports without cuda-bindings or a GPU; the driver is first touched by a call.
The names below are imported lazily, so that `ember.gpu.warmup` can start the driver before
the process has paid for NumPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ember.gpu.array import DeviceArray
    from ember.gpu.context import Context
    from ember.gpu.device import Device
    from ember.gpu.driver import DriverInfo, cuda_available, init
    from ember.gpu.graph import CaptureMode, Graph, GraphExec, StreamCapture
    from ember.gpu.launch import Arg, ArgPack, Dim3, Kernel, Launch, StructArg
    from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
    from ember.gpu.module import Module
    from ember.gpu.peer import PeerGroup
    from ember.gpu.stream import Event, Stream

_LAZY = {
    "Arg": "ember.gpu.launch",
    "ArgPack": "ember.gpu.launch",
    "CaptureMode": "ember.gpu.graph",
    "Context": "ember.gpu.context",
    "Device": "ember.gpu.device",
    "DeviceArray": "ember.gpu.array",
    "DeviceBuffer": "ember.gpu.memory",
    "Dim3": "ember.gpu.launch",
    "DriverInfo": "ember.gpu.driver",
    "Event": "ember.gpu.stream",
    "Graph": "ember.gpu.graph",
    "GraphExec": "ember.gpu.graph",
    "Kernel": "ember.gpu.launch",
    "Launch": "ember.gpu.launch",
    "Module": "ember.gpu.module",
    "PeerGroup": "ember.gpu.peer",
    "PinnedHostBuffer": "ember.gpu.memory",
    "Stream": "ember.gpu.stream",
    "StreamCapture": "ember.gpu.graph",
    "StructArg": "ember.gpu.launch",
    "cuda_available": "ember.gpu.driver",
    "init": "ember.gpu.driver",
}

__all__ = [
    "Arg",
    "ArgPack",
    "CaptureMode",
    "Context",
    "Device",
    "DeviceArray",
    "DeviceBuffer",
    "Dim3",
    "DriverInfo",
    "Event",
    "Graph",
    "GraphExec",
    "Kernel",
    "Launch",
    "Module",
    "PeerGroup",
    "PinnedHostBuffer",
    "Stream",
    "StreamCapture",
    "StructArg",
    "cuda_available",
    "init",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.gpu' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
