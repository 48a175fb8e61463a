"""Thin typed layer over the CUDA driver API (cuda.bindings.driver); knows nothing of models.

Every module imports without cuda-bindings or a GPU; the driver is first touched by a call.
"""

from __future__ import annotations

from ember.gpu.array import DeviceArray
from ember.gpu.context import Context
from ember.gpu.device import Device
from ember.gpu.driver import DriverInfo, cuda_available, init
from ember.gpu.graph import CaptureMode, Graph, GraphExec, StreamCapture
from ember.gpu.launch import Arg, ArgPack, Dim3, Kernel, Launch
from ember.gpu.memory import DeviceBuffer, PinnedHostBuffer
from ember.gpu.module import Module
from ember.gpu.peer import PeerGroup
from ember.gpu.stream import Event, Stream

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
    "cuda_available",
    "init",
]
