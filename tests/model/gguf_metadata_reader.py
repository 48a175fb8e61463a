"""GGUF key/value metadata for tokenizer tests, read without `ember.model.gguf_file`.

`gguf.GGUFReader` builds a NumPy view per string and takes 10-30 s on the default model's
98k vocabulary strings on this machine, over the whole test budget; this reads the same
header in well under a second. Values come back decoded as GGUFFile gives them: strings as
str, string arrays as list[str], numeric arrays as lists of int or float.
"""

from __future__ import annotations

import mmap
import struct
from functools import cache
from pathlib import Path

import numpy as np

from ember.model.default_model import default_model_path

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING = 8
_ARRAY = 9


@cache
def default_tokenizer_metadata() -> dict[str, object]:
    """The default model's `tokenizer.*` keys (cached: the tests share one read)."""
    metadata = read_gguf_metadata(default_model_path())
    return {key: value for key, value in metadata.items() if key.startswith("tokenizer.")}


def read_gguf_metadata(path: Path) -> dict[str, object]:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _read_header(data, path)


def _read_header(data: mmap.mmap, path: Path) -> dict[str, object]:
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    (version,) = struct.unpack_from("<I", data, 4)
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is not supported here")
    _, n_kv = struct.unpack_from("<QQ", data, 8)
    offset = 24
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key, offset = _read_str(data, offset)
        (kind,) = struct.unpack_from("<I", data, offset)
        metadata[key], offset = _read_value(data, offset + 4, kind)
    return metadata


def _read_str(data: mmap.mmap, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", data, offset)
    start = offset + 8
    return data[start : start + length].decode("utf-8"), start + length


def _read_value(data: mmap.mmap, offset: int, kind: int) -> tuple[object, int]:
    if kind == _STRING:
        return _read_str(data, offset)
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack_from(fmt, data, offset)[0], offset + struct.calcsize(fmt)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item_kind, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if item_kind == _STRING:
        strings = []
        for _ in range(count):
            text, offset = _read_str(data, offset)
            strings.append(text)
        return strings, offset
    if item_kind in _SCALARS:
        dtype = np.dtype(_SCALARS[item_kind])
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        return array.tolist(), offset + dtype.itemsize * count
    items = []
    for _ in range(count):
        item, offset = _read_value(data, offset, item_kind)
        items.append(item)
    return items, offset
