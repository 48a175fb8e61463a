"""Launch wrapper for sampling.cu: one token id per logits row, drawn on the device.

Each row reads its own RowParams (temperature, top-k, top-p, min-p, seed, step, and the row of
the token masks of a structured output), so one launch serves a batch of sequences with
different settings, and a sequence's draw depends only on its logits, (seed, step) and mask.
sampling_reference.py is the NumPy model the kernel is tested against.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Kernel, Launch
from ember.gpu.module import Module
from ember.gpu.stream import Stream
from ember.kernels.binaries import load_family
from ember.kernels.interface import dtype_fields, family_interface

_INTERFACE: Final = family_interface("sampling")
# sampling.cu's RowParams, field for field (checked against its exported layout at load).
ROW_PARAMS_DTYPE: Final = np.dtype(
    [
        ("temperature", "<f4"),  # <= 0: greedy
        ("top_k", "<i4"),  # <= 0 or >= vocab: all
        ("top_p", "<f4"),  # >= 1: all
        ("min_p", "<f4"),  # <= 0: all
        ("seed_lo", "<u4"),
        ("seed_hi", "<u4"),
        ("step", "<i4"),
        ("mask_row", "<i4"),  # < 0: all tokens; else the row of the masks to keep to
    ]
)

_FIELDS: Final = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed_lo",
    "seed_hi",
    "step",
    "mask_row",
)
_F32: Final = np.dtype(np.float32)
_I32: Final = np.dtype(np.int32)
_U8: Final = np.dtype(np.uint8)
_THREADS: Final = _INTERFACE.constant("threads")  # the kernel assumes exactly this block size

RowParamsArray = npt.NDArray[np.void]


def row_params(
    temperature: npt.ArrayLike,
    top_k: npt.ArrayLike,
    top_p: npt.ArrayLike,
    min_p: npt.ArrayLike,
    seed: npt.ArrayLike,
    step: npt.ArrayLike,
    mask_row: npt.ArrayLike = -1,
    out: RowParamsArray | None = None,
) -> RowParamsArray:
    """Per-row parameters as ROW_PARAMS_DTYPE, one row per element of the broadcast inputs.

    `seed` is a uint64 per row; `step` counts the sequence's generated tokens; `mask_row` is
    -1 or the row of the masks the row keeps to. With `out` (a preallocated ROW_PARAMS_DTYPE
    array, e.g. pinned for the upload) its first rows are filled.
    """
    seeds = np.asarray(seed, dtype=np.uint64)
    columns = np.broadcast_arrays(
        np.asarray(temperature, dtype=np.float32),
        np.asarray(top_k, dtype=np.int32),
        np.asarray(top_p, dtype=np.float32),
        np.asarray(min_p, dtype=np.float32),
        (seeds & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        (seeds >> np.uint64(32)).astype(np.uint32),
        np.asarray(step, dtype=np.int32),
        np.asarray(mask_row, dtype=np.int32),
    )
    shape = columns[0].shape
    if len(shape) > 1:
        raise ValueError(f"row_params takes scalars or 1-D per-row values, got shape {shape}")
    rows = int(np.prod(shape))
    if out is None:
        out = np.zeros(rows, dtype=ROW_PARAMS_DTYPE)
    elif out.dtype != ROW_PARAMS_DTYPE or out.ndim != 1 or len(out) < rows:
        raise ValueError(
            f"row_params needs out as ROW_PARAMS_DTYPE [>= {rows}], got {out.dtype} {out.shape}"
        )
    for name, column in zip(_FIELDS, columns, strict=True):
        out[name][:rows] = column.reshape(rows)
    return out


def check_row_params() -> None:
    """CudaError unless ROW_PARAMS_DTYPE is sampling.cu's RowParams, field for field."""
    fields = dtype_fields(ROW_PARAMS_DTYPE)
    _INTERFACE.struct("row_params").check("ROW_PARAMS_DTYPE", fields, ROW_PARAMS_DTYPE.itemsize)


class Sampling:
    """The sampling kernel family, loaded in the current context."""

    __slots__ = ("_sample_f32", "module")

    def __init__(self, module: Module) -> None:
        self.module = module
        check_row_params()
        self._sample_f32: Kernel = _INTERFACE.kernel(module, "sample_f32")

    @classmethod
    def load(cls, device: Device) -> Sampling:
        return cls(load_family("sampling", device))

    def sample_launch(
        self,
        logits: DeviceArray,
        params: DeviceArray,
        out: DeviceArray,
        rows: int | None = None,
        masks: DeviceArray | None = None,
    ) -> Launch:
        """out[r] = the token drawn from logits[r] with params[r], for the first `rows` rows.

        logits is float32 [R, V]; params ROW_PARAMS_DTYPE [>= rows] (or those bytes as uint8);
        out int32 [>= rows]. `rows` defaults to R; fewer samples the first rows of buffers
        allocated for the largest batch. masks: int32 [M, (V + 31) // 32], the token masks
        that rows' `mask_row` name (None: no row may name one; the kernel trusts the rows).
        """
        if logits.dtype != _F32 or out.dtype != _I32:
            raise TypeError(
                f"sample needs float32 logits and int32 out, got {logits.dtype}, {out.dtype}"
            )
        if params.dtype == ROW_PARAMS_DTYPE:
            param_rows = params.size
        elif params.dtype == _U8 and params.nbytes % ROW_PARAMS_DTYPE.itemsize == 0:
            param_rows = params.nbytes // ROW_PARAMS_DTYPE.itemsize
        else:
            raise TypeError(
                f"sample needs params as ROW_PARAMS_DTYPE or its bytes as uint8, got "
                f"{params.dtype} {params.shape}"
            )
        if len(logits.shape) != 2 or len(out.shape) != 1 or not 0 < logits.shape[1] < 2**31:
            raise ValueError(
                f"sample needs logits [rows, vocab] and out [rows], got {logits.shape}, {out.shape}"
            )
        count = logits.shape[0] if rows is None else rows
        if not 0 < count <= min(logits.shape[0], param_rows, out.size):
            raise ValueError(
                f"sample of {count} rows needs 1 to {min(logits.shape[0], param_rows, out.size)}"
                f" (logits {logits.shape}, {param_rows} param rows, out {out.shape})"
            )
        if (logits.ptr | params.ptr | out.ptr) % 4:
            raise ValueError("sample needs logits, params and out 4-byte aligned")
        words = (logits.shape[1] + 31) // 32
        if masks is not None and (
            masks.dtype != _I32 or len(masks.shape) != 2 or masks.shape[1] != words
        ):
            raise ValueError(f"sample needs masks as int32 [rows, {words}], got {masks.shape}")
        return Launch(
            self._sample_f32,
            (count, 1, 1),
            (_THREADS, 1, 1),
            (
                logits.ptr,
                params.ptr,
                0 if masks is None else masks.ptr,
                out.ptr,
                logits.shape[1],
                words,
            ),
        )

    def sample(
        self,
        logits: DeviceArray,
        params: DeviceArray,
        out: DeviceArray,
        rows: int | None = None,
        stream: Stream | None = None,
        masks: DeviceArray | None = None,
    ) -> None:
        """sample_launch(...) launched at once; nothing to do for zero rows."""
        if rows == 0 or (rows is None and logits.shape[:1] == (0,)):
            return
        self.sample_launch(logits, params, out, rows, masks)(stream)

    def unload(self) -> None:
        self.module.unload()
