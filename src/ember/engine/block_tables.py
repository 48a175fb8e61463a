"""Every sequence's block table as one row of a persistent int32 array.

The pool writes a sequence's row as it hands out blocks (one element per new block); the
runner builds a step's block tables and cache slots with a few vectorised gathers from it,
instead of converting each sequence's Python list every step. Unused entries hold -1, the
padding a `ForwardBatch` expects. Rows and columns grow on demand (doubling), so the pool
needs no limits up front.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int32Array = npt.NDArray[np.int32]
IndexArray = npt.NDArray[np.intp]


class BlockTables:
    __slots__ = ("_free_rows", "array", "lens")

    def __init__(self, rows: int = 16, width: int = 16) -> None:
        self.array: Int32Array = np.full((max(rows, 1), max(width, 1)), -1, np.int32)
        self.lens: Int32Array = np.zeros(max(rows, 1), np.int32)
        self._free_rows = list(range(self.array.shape[0] - 1, -1, -1))

    @property
    def num_rows_in_use(self) -> int:
        return int(self.array.shape[0]) - len(self._free_rows)

    def acquire(self, blocks: list[int]) -> int:
        """A free row holding `blocks`; the caller keeps the row until it calls `release`."""
        if not self._free_rows:
            self._grow(rows=2 * self.array.shape[0])
        row = self._free_rows.pop()
        count = len(blocks)
        if count:
            if count > self.array.shape[1]:
                self._grow(width=count)
            self.array[row, :count] = blocks
            self.lens[row] = count
        return row

    def append(self, row: int, block_id: int) -> None:
        count = int(self.lens[row])
        if count == self.array.shape[1]:
            self._grow(width=count + 1)
        self.array[row, count] = block_id
        self.lens[row] = count + 1

    def release(self, row: int) -> None:
        self.array[row, : self.lens[row]] = -1
        self.lens[row] = 0
        self._free_rows.append(row)

    def gather(self, rows: IndexArray) -> Int32Array:
        """The tables of `rows`, as wide as the longest of them, padded with -1."""
        width = int(self.lens[rows].max()) if rows.shape[0] else 0
        tables: Int32Array = self.array[rows, :width]
        return tables

    def _grow(self, rows: int = 0, width: int = 0) -> None:
        old_rows, old_width = self.array.shape
        new_rows = max(rows, old_rows)
        new_width = old_width if width <= old_width else max(width, 2 * old_width)
        array = np.full((new_rows, new_width), -1, np.int32)
        array[:old_rows, :old_width] = self.array
        self.array = array
        if new_rows > old_rows:
            self.lens = np.concatenate([self.lens, np.zeros(new_rows - old_rows, np.int32)])
            self._free_rows[:0] = range(new_rows - 1, old_rows - 1, -1)
