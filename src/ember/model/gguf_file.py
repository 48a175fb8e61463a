"""A validated, memory-mapped view of a GGUF file: metadata, tensor directory, tensor data.

Everything that can be wrong with the file is found by `GGUFFile.open` and reported as a
`ModelFormatError` naming the file and the offending key or tensor, so later layers can trust
what they read. Tensor data stays in the memory map until `load` dequantizes it.
"""

from __future__ import annotations

import difflib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS, ReaderField

from ember.errors import ModelFormatError, ModelNotFoundError
from ember.model.quant import dequantize, supported_type_names

_MAGIC = b"GGUF"
# Fixed header (GGUF spec): magic u32, version u32, tensor count u64, metadata entry count u64.
_HEADER_BYTES = 24
# GGUFReader records the fixed header as fields with these names next to the real metadata.
_READER_FIELD_PREFIX = "GGUF."
_U64 = struct.Struct("<Q")  # string lengths; big-endian files are rejected before parsing


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One entry of the tensor directory."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # NumPy order: the reverse of the dims GGUF stores
    n_bytes: int


@dataclass(frozen=True, slots=True, eq=False)
class GGUFFile:
    """An opened GGUF file; build it with `GGUFFile.open`."""

    path: Path
    version: int
    metadata: Mapping[str, object]
    tensors: Mapping[str, TensorInfo]
    _data: Mapping[str, npt.NDArray[Any]] = field(repr=False)

    @classmethod
    def open(cls, path: str | Path) -> GGUFFile:
        """Map and validate `path`; `ModelNotFoundError` if absent, else `ModelFormatError`."""
        path = Path(path)
        file_size, version = _check_header(path)
        reader = _read(path)
        tensors: dict[str, TensorInfo] = {}
        data: dict[str, npt.NDArray[Any]] = {}
        for tensor in reader.tensors:
            info = TensorInfo(
                name=tensor.name,
                ggml_type=tensor.tensor_type,
                shape=tuple(int(d) for d in reversed(tensor.shape.tolist())),
                n_bytes=int(tensor.n_bytes),
            )
            end = int(tensor.data_offset) + info.n_bytes
            if end > file_size:
                raise ModelFormatError(
                    f"{path}: file is truncated: tensor {info.name!r} ({info.ggml_type.name}, "
                    f"shape {info.shape}) ends at byte {end} but the file has {file_size} bytes"
                )
            tensors[info.name] = info
            data[info.name] = tensor.data
        metadata = {
            key: _decode_field(path, key, value)
            for key, value in reader.fields.items()
            if not key.startswith(_READER_FIELD_PREFIX)
        }
        return cls(
            path=path,
            version=version,
            metadata=MappingProxyType(metadata),
            tensors=MappingProxyType(tensors),
            _data=MappingProxyType(data),
        )

    @property
    def architecture(self) -> str:
        """`general.architecture`, e.g. 'llama'."""
        return self.require_str("general.architecture")

    def get(self, key: str, default: object = None) -> object:
        return self.metadata.get(key, default)

    def require(self, key: str) -> object:
        try:
            return self.metadata[key]
        except KeyError:
            raise ModelFormatError(f"{self.path}: missing metadata key {key!r}") from None

    def require_int(self, key: str) -> int:
        value = self.require(key)
        # bool is an int subclass, but a GGUF BOOL where a count belongs is a broken file.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong_type(key, "an integer", value)
        return value

    def require_float(self, key: str) -> float:
        """A float key; integers are accepted too since some converters write e.g. 10000."""
        value = self.require(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong_type(key, "a number", value)
        return float(value)

    def require_str(self, key: str) -> str:
        value = self.require(key)
        if not isinstance(value, str):
            raise self._wrong_type(key, "a string", value)
        return value

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def raw(self, name: str) -> npt.NDArray[Any]:
        """The tensor's data as stored, without a copy: a read-only view of the memory map.

        Typed (float32, float16, int32, ...) for plain types; rows of block bytes (uint8) for
        block-quantized types.
        """
        self._info(name)
        return self._data[name]

    def load(
        self, name: str, expected_shape: tuple[int, ...] | None = None
    ) -> npt.NDArray[np.float32]:
        """The tensor dequantized to float32, checked against `expected_shape` (NumPy order)."""
        info = self._info(name)
        if expected_shape is not None and tuple(expected_shape) != info.shape:
            raise ModelFormatError(
                f"{self.path}: tensor {name!r} has shape {info.shape}, "
                f"expected {tuple(expected_shape)}"
            )
        try:
            return dequantize(self._data[name], info.ggml_type, info.shape)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{self.path}: tensor {name!r}: {exc}") from exc

    def _info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            close = difflib.get_close_matches(name, self.tensors, n=3)
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise ModelFormatError(
                f"{self.path}: no tensor {name!r} among its {len(self.tensors)} tensors{hint}"
            )
        return info

    def _wrong_type(self, key: str, expected: str, value: object) -> ModelFormatError:
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return ModelFormatError(
            f"{self.path}: metadata key {key!r} should be {expected}, "
            f"found {type(value).__name__} {shown}"
        )


class _TensorEntryError(Exception):
    """A tensor directory entry GGUFReader would fail on with no tensor named."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(name, problem)
        self.name = name
        self.problem = problem


class _ShortReadError(Exception):
    def __init__(self, end: int, file_size: int, where: str) -> None:
        super().__init__(end, file_size, where)
        self.end = end
        self.file_size = file_size
        self.where = where


class _BoundedReader(GGUFReader):
    """GGUFReader with bounds-checked, cheap reads and fast metadata arrays.

    GGUFReader slices its memmap without checking the end, so a truncated file surfaces as an
    IndexError, a reshape error or, inside an array, a loop reading nothing for every element
    of a corrupt length. It also parses arrays one element at a time through several NumPy
    slices of the np.memmap each: it took 21 s to open the default model (~98k strings in its
    vocabulary and merges) on a 2-core test machine. Here a scalar array is one slice of a
    plain ndarray view, and a string array is two parts, its lengths and its bytes (see
    `_string_parts`), so ReaderField.contents() does not read string arrays of this reader:
    `_decode_value` does.
    """

    _plain: npt.NDArray[np.uint8]

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        try:
            plain = self._plain
        except AttributeError:
            plain = self._plain = np.asarray(self.data)
        item = np.dtype(dtype)
        start = int(offset)
        end = start + item.itemsize * int(count)
        if end > plain.size:
            # Tensor data is read after the header, from `data_offset` on. A stand-in that
            # reshapes without allocating lets the reader finish, so `open` can name the
            # truncated tensor; its extent check rejects every tensor that got one.
            if start >= getattr(self, "data_offset", plain.size + 1):
                return np.lib.stride_tricks.as_strided(
                    np.zeros(1, dtype=item), shape=(int(count),), strides=(0,)
                )
            raise _ShortReadError(end, plain.size, self._position())
        arr = plain[start:end].view(item)
        order = self.byte_order if override_order is None else override_order
        return arr if order == "I" else arr.view(arr.dtype.newbyteorder(order))

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        seen: set[str] = set()
        for entry in fields:
            _check_tensor_entry(entry, seen)
        super()._build_tensors(start_offs, fields)

    def _get_field_parts(
        self, orig_offs: int, raw_type: int
    ) -> tuple[int, list[npt.NDArray[Any]], list[int], list[GGUFValueType]]:
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        item_type_part = self._get(orig_offs, np.uint32)
        count_part = self._get(orig_offs + 4, np.uint64)
        item_type = GGUFValueType(int(item_type_part[0]))
        count = int(count_part[0])
        types = [GGUFValueType.ARRAY, item_type]
        start = orig_offs + 12
        scalar = self.gguf_scalar_to_np.get(item_type)
        if scalar is not None:
            # One part holding every element; GGUFReader's `contents` reads that layout too.
            values = self._get(start, scalar, count)
            return 12 + int(values.nbytes), [item_type_part, count_part, values], [2], types
        if item_type != GGUFValueType.STRING:
            return super()._get_field_parts(orig_offs, raw_type)
        parts, end = self._string_parts(start, count)
        return end - orig_offs, [item_type_part, count_part, *parts], [2], types

    def _string_parts(self, offset: int, count: int) -> tuple[list[npt.NDArray[Any]], int]:
        """[lengths (uint64), the array's bytes from its first length field on], and its end.

        Only the walk from one length field to the next is sequential; it is one unpack per
        string, the strings themselves are cut and decoded later by `_decode_strings`. (A NumPy
        split and decode of the whole block measured slower than this loop: 15 vs 8 ms for the
        default model's 49k tokens.)
        """
        plain = self._plain
        unpack = _U64.unpack_from
        buffer = plain.data
        lengths: list[int] = []
        append = lengths.append
        start = offset
        try:
            for _ in range(count):
                (length,) = unpack(buffer, offset)
                append(length)
                offset += 8 + length
        except (struct.error, OverflowError):
            # `offset` is past the end (the last string overran) or its length field is cut.
            end = offset if offset > plain.size else offset + 8
            raise _ShortReadError(end, plain.size, self._position()) from None
        if offset > plain.size:
            raise _ShortReadError(offset, plain.size, self._position())
        return [np.array(lengths, dtype=np.uint64), plain[start:offset]], offset

    def _position(self) -> str:
        fields: Mapping[str, ReaderField] = getattr(self, "fields", {})
        count = fields.get(_READER_FIELD_PREFIX + "kv_count")
        if count is None:
            return "the fixed header"
        keys = [key for key in fields if not key.startswith(_READER_FIELD_PREFIX)]
        if len(keys) < int(count.parts[0][0]):
            after = f" (after key {keys[-1]!r})" if keys else ""
            return f"metadata entry {len(keys) + 1}{after}"
        return "the tensor directory"


def _check_header(path: Path) -> tuple[int, int]:
    """File size and GGUF version, checked before GGUFReader maps the file."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelNotFoundError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
            file_size = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read model file {path}: {exc.strerror}") from exc
    if file_size == 0:
        raise ModelFormatError(f"{path}: file is empty (0 bytes), not a GGUF model")
    if len(head) < len(_MAGIC):
        raise ModelFormatError(f"{path}: file is {file_size} bytes, too short to be a GGUF file")
    if head[:4] != _MAGIC:
        raise ModelFormatError(
            f"{path}: not a GGUF file (starts with {head[:4]!r}, expected {_MAGIC!r})"
        )
    if file_size < _HEADER_BYTES:
        raise ModelFormatError(
            f"{path}: file is truncated: {file_size} bytes, "
            f"shorter than the {_HEADER_BYTES}-byte GGUF header"
        )
    version = int.from_bytes(head[4:8], "little")
    if version not in READER_SUPPORTED_VERSIONS:
        if int.from_bytes(head[4:8], "big") in READER_SUPPORTED_VERSIONS:
            raise ModelFormatError(
                f"{path}: big-endian GGUF file; Ember reads little-endian GGUF only"
            )
        supported = ", ".join(str(v) for v in READER_SUPPORTED_VERSIONS)
        raise ModelFormatError(
            f"{path}: unsupported GGUF version {version} (supported: {supported})"
        )
    return file_size, version


def _check_tensor_entry(entry: ReaderField, seen: set[str]) -> None:
    """Type, row length and name of one tensor directory entry, checked before GGUFReader
    builds its view (it reports these with a bare ValueError or KeyError, no tensor named)."""
    _, name_bytes, _, dims, type_id, _ = entry.parts
    name = bytes(name_bytes).decode("utf-8", errors="replace")
    if name in seen:
        raise _TensorEntryError(name, "appears twice in the tensor directory")
    seen.add(name)
    try:
        ggml_type = GGMLQuantizationType(int(type_id[0]))
    except ValueError:
        raise _TensorEntryError(
            name,
            f"unknown tensor type id {int(type_id[0])} (not a GGML type this version of the "
            f"gguf package knows); Ember reads {supported_type_names()}",
        ) from None
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    row = int(dims[0]) if len(dims) else 1  # GGUF lists dims innermost first
    if row % block_size != 0:
        shape = tuple(int(d) for d in reversed(dims.tolist()))
        raise _TensorEntryError(
            name,
            f"{ggml_type.name} tensor of shape {shape}: its row length {row} is not a "
            f"multiple of the {block_size}-weight {ggml_type.name} block",
        )


def _read(path: Path) -> _BoundedReader:
    try:
        return _BoundedReader(path)
    except _TensorEntryError as exc:
        raise ModelFormatError(f"{path}: tensor {exc.name!r}: {exc.problem}") from None
    except _ShortReadError as exc:
        raise ModelFormatError(
            f"{path}: file is truncated in {exc.where}: reading it needs {exc.end} bytes "
            f"but the file has {exc.file_size}"
        ) from None
    except Exception as exc:  # GGUFReader reports corrupt input with whatever NumPy raised
        raise ModelFormatError(
            f"{path}: corrupt GGUF header or metadata: {type(exc).__name__}: {exc}"
        ) from exc


def _decode_field(path: Path, key: str, value: ReaderField) -> object:
    try:
        return _decode_value(value)
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ModelFormatError(f"{path}: metadata key {key!r} is corrupt: {exc}") from exc


def _decode_value(value: ReaderField) -> object:
    if not value.types:
        raise ValueError("no value type recorded")
    parts = value.parts
    if value.types[0] == GGUFValueType.ARRAY:
        # Element parts are listed in `data`; an empty array records no element type.
        if not value.data:
            return []
        if value.types[-1] == GGUFValueType.STRING:
            first = value.data[0]
            return _decode_strings(parts[first], parts[first + 1])
        return np.concatenate([parts[i] for i in value.data]).tolist()
    if value.types[0] == GGUFValueType.STRING:
        return parts[value.data[0]].tobytes().decode("utf-8")
    return parts[value.data[0]].item()


def _decode_strings(lengths: npt.NDArray[np.uint64], block: npt.NDArray[np.uint8]) -> list[str]:
    """The strings of an array laid out as (u64 length, bytes) pairs, `block` holding them all."""
    data = block.tobytes()
    ends = np.cumsum(lengths + 8, dtype=np.uint64)
    starts = ends - lengths
    return [data[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
