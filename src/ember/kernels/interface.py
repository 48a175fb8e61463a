"""What each kernel family's compiled code tells its Python wrapper: every kernel's parameter
types, the constants the wrapper sizes launches by, and the layouts of the structs kernels take
by value.

interface.cuh's EMBER_EXPORT_* macros put them in the PTX, scripts/build_kernels.py reads them
back out (`FamilyInterface.from_ptx`, which checks them against each `.entry`'s own parameter
list) into manifest.json, and the wrappers take them from there (`family_interface`). The .cu
is their one owner: a wrapper holds no parameter list of its own, and a launch tuple or struct
mirror that no longer fits the kernel fails when the family loads (Module.function checks each
kernel against the driver's cuFuncGetParamInfo) and in tests/kernels/test_interface.py.
"""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Final

import numpy as np

from ember.errors import CudaError
from ember.gpu.launch import Arg, Kernel, Param, StructArg
from ember.gpu.module import Module
from ember.kernels.binaries import BIN_DIR

MANIFEST: Final = BIN_DIR / "manifest.json"
_REBUILD: Final = "rebuild with python3 scripts/build_kernels.py"
# interface.cuh's symbol names.
_PARAMS, _CONST, _STRUCT = "ember_params_", "ember_const_", "ember_struct_"
# An initialised (or zero) array in the PTX: `.global .align 4 .b8 name[16] = {1, 0, ...};`.
_GLOBAL = re.compile(
    r"^\s*(?:\.visible\s+)?\.global\s+\.align\s+\d+\s+\.([bsu])(8|32)\s+(ember_\w+)"
    r"\[(\d+)\](?:\s*=\s*\{([^}]*)\})?\s*;",
    re.MULTILINE,
)
_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)")
_PARAM = re.compile(
    r"\.param\s+(?:\.align\s+(\d+)\s+)?\.([a-z]+)(\d+)\s+"
    r"(?:\.ptr(?:\s+\.[a-z]+)*(?:\s+\.align\s+\d+)?\s+)?\w+(?:\[(\d+)\])?"
)
# Which PTX parameter types hold each Arg.
_PTX_TYPES: Final = {
    Arg.PTR: ("u64", "s64", "b64"),
    Arg.I64: ("u64", "s64", "b64"),
    Arg.U64: ("u64", "s64", "b64"),
    Arg.I32: ("u32", "s32", "b32"),
    Arg.U32: ("u32", "s32", "b32"),
    Arg.F32: ("f32",),
}
_CTYPES: Final[Mapping[Any, Arg]] = {
    ctypes.c_void_p: Arg.PTR,
    ctypes.c_int32: Arg.I32,
    ctypes.c_uint32: Arg.U32,
    ctypes.c_int64: Arg.I64,
    ctypes.c_uint64: Arg.U64,
    ctypes.c_float: Arg.F32,
}
_DTYPES: Final = {
    np.dtype("<i4"): Arg.I32,
    np.dtype("<u4"): Arg.U32,
    np.dtype("<i8"): Arg.I64,
    np.dtype("<u8"): Arg.U64,
    np.dtype("<f4"): Arg.F32,
}


@dataclass(frozen=True, slots=True)
class Field:
    """A field of an exported struct: its name, type (an Arg name), offset and size."""

    name: str
    type: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.name} ({self.type}, {self.size} bytes at {self.offset})"


@dataclass(frozen=True, slots=True)
class StructLayout:
    """A struct exported with EMBER_EXPORT_STRUCT, as the compiler laid it out."""

    name: str
    size: int
    align: int
    fields: tuple[Field, ...]

    def check(self, mirror: str, fields: tuple[Field, ...], size: int) -> None:
        """CudaError unless `mirror`'s fields (and size) are this struct's, field for field."""
        for index in range(max(len(fields), len(self.fields))):
            mine = self.fields[index] if index < len(self.fields) else "nothing"
            theirs = fields[index] if index < len(fields) else "nothing"
            if mine != theirs:
                raise CudaError(
                    f"{mirror} does not mirror the kernels' struct {self.name}: its field "
                    f"{index} is {theirs}, the kernels' is {mine} (fix {mirror}, or {_REBUILD})"
                )
        if size != self.size:
            raise CudaError(f"{mirror} is {size} bytes, the kernels' {self.name} {self.size}")


class KernelStruct(ctypes.Structure):
    """The mirror of a struct kernels take by value: a subclass lists the exported struct's
    fields in `_fields_` (names, order and ctypes types: c_void_p for pointers) and names it in
    `exported_as`. A launch passes `bytes(instance)`."""

    exported_as: ClassVar[str]

    @classmethod
    def layout_fields(cls) -> tuple[Field, ...]:
        fields = []
        for name, ctype, *_bits in cls._fields_:
            arg = _CTYPES.get(ctype)
            descriptor = getattr(cls, name)
            type_name = arg.name if arg is not None else ctype.__name__
            fields.append(Field(name, type_name, descriptor.offset, descriptor.size))
        return tuple(fields)


def dtype_fields(dtype: np.dtype[Any]) -> tuple[Field, ...]:
    """A structured NumPy dtype's fields, as StructLayout.check compares them."""
    assert dtype.names is not None and dtype.fields is not None
    fields = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        arg = _DTYPES.get(field_dtype)
        type_name = arg.name if arg is not None else str(field_dtype)
        fields.append(Field(name, type_name, offset, field_dtype.itemsize))
    return tuple(fields)


@dataclass(frozen=True, slots=True)
class FamilyInterface:
    """One family's kernels (name: parameter types, each an Arg name or an exported struct's
    name), constants and exported structs."""

    family: str
    kernels: Mapping[str, tuple[str, ...]]
    constants: Mapping[str, tuple[int, ...]]
    structs: Mapping[str, StructLayout]

    def constant(self, name: str) -> int:
        (value,) = self.table(name)
        return value

    def table(self, name: str) -> tuple[int, ...]:
        values = self.constants.get(name)
        if values is None:
            raise CudaError(
                f"{self.family}.cu exports no constant {name!r} (has {sorted(self.constants)}): "
                f"add EMBER_EXPORT_CONST({name}, ...) there, or {_REBUILD}"
            )
        return values

    def rows(self, name: str, width: int) -> tuple[tuple[int, ...], ...]:
        """Table `name` cut into rows of `width` values."""
        values = self.table(name)
        if len(values) % width:
            raise CudaError(f"{self.family}.cu's {name} has {len(values)} values, not {width}s")
        return tuple(values[i : i + width] for i in range(0, len(values), width))

    def struct(self, name: str) -> StructLayout:
        layout = self.structs.get(name)
        if layout is None:
            raise CudaError(f"{self.family}.cu exports no struct {name!r}: {_REBUILD}")
        return layout

    def check_mirror(self, mirror: type[KernelStruct]) -> StructArg:
        """The StructArg of `mirror`, after checking it field for field against its struct."""
        layout = self.struct(mirror.exported_as)
        layout.check(mirror.__name__, mirror.layout_fields(), ctypes.sizeof(mirror))
        if ctypes.alignment(mirror) != layout.align:
            raise CudaError(f"{mirror.__name__} is aligned to {ctypes.alignment(mirror)} bytes")
        return StructArg(layout.name, layout.size, layout.align)

    def signature(self, kernel: str, *mirrors: type[KernelStruct]) -> tuple[Param, ...]:
        """`kernel`'s parameters; a struct parameter needs its mirror among `mirrors`."""
        types = self.kernels.get(kernel)
        if types is None:
            raise CudaError(f"{self.family}.cu exports no kernel {kernel!r}: {_REBUILD}")
        by_name = {m.exported_as: m for m in mirrors}
        signature: list[Param] = []
        for index, type_name in enumerate(types):
            if type_name in Arg.__members__:
                signature.append(Arg[type_name])
            elif type_name in by_name:
                signature.append(self.check_mirror(by_name[type_name]))
            else:
                raise CudaError(
                    f"{kernel} parameter {index} is struct {type_name}; its wrapper passes no "
                    f"mirror of it (has {sorted(by_name)})"
                )
        return tuple(signature)

    def kernel(self, module: Module, name: str, *mirrors: type[KernelStruct]) -> Kernel:
        """Kernel `name` of `module` (an image of this family) with the parameters its .cu
        declares; Module.function checks them against the loaded image."""
        return module.function(name, self.signature(name, *mirrors))

    def to_json(self) -> dict[str, Any]:
        return {
            "kernels": {name: list(types) for name, types in self.kernels.items()},
            "constants": {name: list(values) for name, values in self.constants.items()},
            "structs": {
                name: {
                    "size": s.size,
                    "align": s.align,
                    "fields": [[f.name, f.type, f.offset, f.size] for f in s.fields],
                }
                for name, s in self.structs.items()
            },
        }

    @classmethod
    def from_json(cls, family: str, data: Mapping[str, Any]) -> FamilyInterface:
        structs = {
            name: StructLayout(
                name, s["size"], s["align"], tuple(Field(*field) for field in s["fields"])
            )
            for name, s in data["structs"].items()
        }
        return cls(
            family,
            {name: tuple(types) for name, types in data["kernels"].items()},
            {name: tuple(values) for name, values in data["constants"].items()},
            structs,
        )

    @classmethod
    def from_ptx(cls, family: str, ptx: str) -> FamilyInterface:
        """Read the exports out of a family's PTX and check each kernel's exported parameter
        types against its `.entry`'s parameters: CudaError naming the kernel, the parameter
        and both types on any difference."""
        exported = _exported_arrays(ptx)
        constants = {
            name.removeprefix(_CONST): _ints(data)
            for name, data in exported.items()
            if name.startswith(_CONST)
        }
        structs = {}
        for name, data in exported.items():
            if name.startswith(_STRUCT) and not name.endswith(("_names", "_types")):
                struct = name.removeprefix(_STRUCT)
                structs[struct] = _struct_layout(struct, _ints(data), exported)
        kernels = {}
        entries = dict(_ENTRY.findall(ptx))
        for name, params in entries.items():
            names = exported.get(_PARAMS + name)
            if names is None:
                raise CudaError(f"{family}.cu: kernel {name} has no EMBER_EXPORT_PARAMS({name})")
            types = tuple(_text(names).split())
            _check_entry(name, params, types, structs)
            kernels[name] = types
        stray = {n.removeprefix(_PARAMS) for n in exported if n.startswith(_PARAMS)} - set(entries)
        if stray:
            raise CudaError(f"{family}.cu exports parameters of no kernel: {sorted(stray)}")
        return cls(family, kernels, constants, structs)


@cache
def _manifest_interfaces() -> Mapping[str, Any]:
    interfaces: Mapping[str, Any] = json.loads(MANIFEST.read_text()).get("interfaces", {})
    return interfaces


@cache
def family_interface(family: str) -> FamilyInterface:
    """`<family>.cu`'s interface as the last build recorded it in manifest.json."""
    data = _manifest_interfaces().get(family)
    if data is None:
        raise CudaError(f"{MANIFEST} describes no kernel family {family!r}: {_REBUILD}")
    return FamilyInterface.from_json(family, data)


def _exported_arrays(ptx: str) -> dict[str, bytes]:
    """The bytes of every interface.cuh array in the PTX (the PTX leaves trailing zeros out)."""
    arrays = {}
    for kind, bits, name, count, values in _GLOBAL.findall(ptx):
        width = int(bits) // 8
        numbers = [int(v, 0) for v in values.split(",")] if values.strip() else []
        data = b"".join(n.to_bytes(width, "little", signed=kind == "s") for n in numbers)
        arrays[name] = data.ljust(int(count) * width, b"\0")
    return arrays


def _ints(data: bytes) -> tuple[int, ...]:
    return tuple(int(v) for v in np.frombuffer(data, dtype="<i4"))


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("ascii")


def _struct_layout(name: str, ints: tuple[int, ...], exported: Mapping[str, bytes]) -> StructLayout:
    names = [n.strip() for n in _text(exported[f"{_STRUCT}{name}_names"]).split(",")]
    types = _text(exported[f"{_STRUCT}{name}_types"]).split()
    size, align, *pairs = ints
    if not len(names) == len(types) == len(pairs) // 2:
        raise CudaError(f"struct {name}: {len(names)} names, {len(types)} types, {pairs} layout")
    fields = tuple(
        Field(n, t, pairs[2 * i], pairs[2 * i + 1])
        for i, (n, t) in enumerate(zip(names, types, strict=True))
    )
    return StructLayout(name, size, align, fields)


def _check_entry(
    kernel: str, params: str, types: tuple[str, ...], structs: Mapping[str, StructLayout]
) -> None:
    """CudaError unless the `.entry`'s PTX parameters hold the exported `types`."""
    found = _PARAM.findall(params)
    if len(found) != len(types):
        raise CudaError(
            f"{kernel} takes {len(found)} parameters in the PTX, its export lists {len(types)}"
        )
    for index, ((align, kind, bits, count), type_name) in enumerate(zip(found, types, strict=True)):
        ptx = f".{kind}{bits}" + (f"[{count}]" if count else "")
        if type_name in Arg.__members__:
            fits = not count and f"{kind}{bits}" in _PTX_TYPES[Arg[type_name]]
        else:
            layout = structs.get(type_name)
            fits = (
                layout is not None
                and kind == "b"
                and bits == "8"
                and int(count or 0) == layout.size
                and int(align or 1) == layout.align
            )
            type_name = f"struct {type_name}"
        if not fits:
            raise CudaError(
                f"{kernel}: parameter {index} is {ptx} in the PTX but {type_name} in the "
                "exported parameter list"
            )
