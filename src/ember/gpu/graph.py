"""CUDA graphs: record a stream's work once, replay it with one launch.

A decode step is many small kernels; replaying them as one graph costs one driver call instead
of one Python-side launch per kernel. Capture with `StreamCapture`, `instantiate()` the Graph,
`launch()` the GraphExec; when only kernel arguments or copy addresses change, capture again
and `update()` the GraphExec in place instead of instantiating anew.
"""

from __future__ import annotations

from enum import Enum
from types import TracebackType
from typing import Any

from ember.errors import CudaError
from ember.gpu.driver import api, call, check, error_from_result
from ember.gpu.handle import Handle
from ember.gpu.stream import Stream


class CaptureMode(Enum):
    """Which unsafe driver calls (e.g. cuMemAlloc) other code may make during a capture:
    GLOBAL forbids them in every thread, THREAD_LOCAL in this thread, RELAXED nowhere."""

    GLOBAL = "CU_STREAM_CAPTURE_MODE_GLOBAL"
    THREAD_LOCAL = "CU_STREAM_CAPTURE_MODE_THREAD_LOCAL"
    RELAXED = "CU_STREAM_CAPTURE_MODE_RELAXED"


class Graph(Handle):
    """A captured (not yet executable) graph."""

    __slots__ = ()
    KIND, RELEASED, DRIVER_RELEASE = "graph", "destroyed", "cuGraphDestroy"

    def node_count(self) -> int:
        _nodes, count = call(api().cuGraphGetNodes, self.handle, 0)
        return int(count)

    def instantiate(self) -> GraphExec:
        return GraphExec(call(api().cuGraphInstantiate, self.handle, 0))

    def destroy(self) -> None:
        self._release_once()


class GraphExec(Handle):
    """An instantiated graph, ready to launch on any stream of its context."""

    __slots__ = ("_launch",)
    KIND, RELEASED, DRIVER_RELEASE = "graph exec", "destroyed", "cuGraphExecDestroy"

    def __init__(self, handle: Any) -> None:
        super().__init__(handle)  # CUgraphExec
        self._launch = api().cuGraphLaunch

    def launch(self, stream: Stream) -> None:
        (err,) = self._launch(self.handle, stream.handle)
        if err:
            raise error_from_result("cuGraphLaunch", err)

    def upload(self, stream: Stream) -> None:
        """Move the graph's launch data to the device ahead of the first launch."""
        call(api().cuGraphUpload, self.handle, stream.handle)

    def update(self, graph: Graph) -> bool:
        """Take `graph`'s parameters in place; False if its topology differs (instantiate it
        instead). Node types, count and dependencies must match; kernel arguments, launch
        dimensions and copy addresses may change."""
        cu = api()
        err, _info = cu.cuGraphExecUpdate(self.handle, graph.handle)
        if err == cu.CUresult.CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE:
            return False
        check("cuGraphExecUpdate", err)
        return True

    def destroy(self) -> None:
        self._release_once()


class StreamCapture:
    """`with StreamCapture(stream) as capture:` records the block's work on `stream` (nothing
    runs); afterwards `capture.graph` holds it."""

    __slots__ = ("_graph", "mode", "stream")

    def __init__(self, stream: Stream, mode: CaptureMode = CaptureMode.GLOBAL) -> None:
        self.stream = stream
        self.mode = mode
        self._graph: Graph | None = None

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            raise CudaError("no graph: the capture has not ended, or it failed")
        return self._graph

    def __enter__(self) -> StreamCapture:
        cu = api()
        mode = getattr(cu.CUstreamCaptureMode, self.mode.value)
        call(cu.cuStreamBeginCapture, self.stream.handle, mode)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        cu = api()
        err, handle = cu.cuStreamEndCapture(self.stream.handle)
        if exc is not None:
            # The stream must leave capture mode either way; the block's own error is the one
            # worth reporting, so a failed end of capture is not raised over it.
            if not err and handle:
                call(cu.cuGraphDestroy, handle)
            return
        check("cuStreamEndCapture", err)
        self._graph = Graph(handle)
