"""ember.kernels.interface: each kernel's parameters, constants and struct layouts come from its
.cu (through the PTX and manifest.json), and whatever does not fit them is refused, on the CPU.

The wrappers are built here over a stand-in module whose kernels pack every launch with the
manifest's signature: a launch tuple that no longer fits its kernel's .cu fails here."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from ember.errors import CudaError
from ember.gpu import module as gpu_module
from ember.gpu.array import DeviceArray
from ember.gpu.device import Device
from ember.gpu.launch import Arg, ArgPack, Param, StructArg
from ember.gpu.memory import DeviceBuffer
from ember.kernels.attention import Attention, choose_splits, counters_size, partials_size
from ember.kernels.binaries import BIN_DIR
from ember.kernels.elementwise import Elementwise
from ember.kernels.embedding import Embedding
from ember.kernels.interface import FamilyInterface, KernelStruct, family_interface
from ember.kernels.norm import Norm
from ember.kernels.quant_gemm import GemmTile, QuantGemm, tile_layouts
from ember.kernels.quant_gemv import (
    GemvFusion,
    GemvOutputAt,
    Output,
    QuantGemv,
    QuantType,
    RmsNorm,
)
from ember.kernels.quant_mmq import MMQ_TYPES, MmqTile, QuantMmq, workspace_bytes
from ember.kernels.rope import Rope, RopeCache, RopeQkvArgs
from ember.kernels.sampling import ROW_PARAMS_DTYPE, Sampling, check_row_params
from ember.kernels.synthetic import Synthetic

FAMILIES = sorted(path.stem for path in BIN_DIR.parent.glob("*.cu"))
H100 = Device(0, None, "stand-in H100", 80 << 30, (9, 0), 132, 50 << 20, 227 * 1024)


class StandInKernel:
    """Packs each launch's arguments as Kernel.launch does, and checks struct bytes' length
    (which the real launch leaves to the load-time check)."""

    def __init__(self, name: str, signature: tuple[Param, ...]) -> None:
        self.name = name
        self.signature = signature
        self.pack = ArgPack(signature)
        self.launches: list[tuple[Any, ...]] = []

    def launch(self, grid: Any, block: Any, *args: Any, stream: Any = None, shared_mem: int = 0):
        self.pack.pack(args)
        for param, value in zip(self.signature, args, strict=True):
            if isinstance(param, StructArg):
                assert isinstance(value, bytes) and len(value) == param.size, self.name
        self.launches.append(args)

    def set_max_dynamic_shared_memory(self, nbytes: int) -> None:
        pass


class StandInModule:
    def __init__(self) -> None:
        self.kernels: dict[str, StandInKernel] = {}

    def function(self, name: str, signature: tuple[Param, ...]) -> StandInKernel:
        self.kernels[name] = StandInKernel(name, signature)
        return self.kernels[name]

    def unload(self) -> None:
        pass


_next_address = [1 << 30]


def device_array(shape: tuple[int, ...], dtype: Any) -> DeviceArray:
    """An array at a made-up, 256-byte-aligned address: nothing reaches a driver."""
    dt = np.dtype(dtype)
    nbytes = max(int(np.prod(shape)), 1) * dt.itemsize
    address = _next_address[0]
    _next_address[0] += -(-nbytes // 256) * 256
    return DeviceArray(DeviceBuffer(address, nbytes), shape, dt)


def f32(*shape: int) -> DeviceArray:
    return device_array(shape, np.float32)


def i32(*shape: int) -> DeviceArray:
    return device_array(shape, np.int32)


def launched(module: StandInModule) -> set[str]:
    return {name for name, kernel in module.kernels.items() if kernel.launches}


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_holds_what_the_ptx_exports(family: str) -> None:
    ptx = (BIN_DIR / f"{family}.compute_80.ptx").read_text()
    assert FamilyInterface.from_ptx(family, ptx) == family_interface(family)


def rope_cache(
    tokens: int, q_heads: int = 4, kv_heads: int = 2, head_dim: int = 64, neox: bool = False
) -> RopeCache:
    cache = device_array((16, kv_heads, head_dim), np.float16)
    inv_freq = device_array((head_dim // 2,), np.float64)
    bias = f32((q_heads + 2 * kv_heads) * head_dim)
    return RopeCache(i32(tokens), i32(tokens), cache, cache, q_heads, inv_freq, neox, bias)


def drive_elementwise(module: StandInModule) -> None:
    family = Elementwise(module)  # type: ignore[arg-type]
    family.vector_add(f32(1000), f32(1000), f32(1000))
    family.silu_mul_launch(f32(3, 64), f32(3, 32))()
    family.gather_rows_launch(f32(5, 64), i32(2), f32(2, 64))()


def drive_norm(module: StandInModule) -> None:
    family = Norm(module)  # type: ignore[arg-type]
    family.rms_norm(f32(2, 64), f32(64), f32(2, 64), 1e-5)
    family.add_rms_norm(f32(2, 64), f32(2, 64), f32(64), f32(2, 64), 1e-5)
    family.gather_rms_norm_launch(f32(4, 64), i32(2), f32(64), f32(2, 64), 1e-5)()


def drive_rope(module: StandInModule) -> None:
    family = Rope(module)  # type: ignore[arg-type]
    family.apply(f32(3, 4, 64), f32(3, 2, 64), i32(3), device_array((32,), np.float64))
    family.qkv_cache_launch(f32(3, 8 * 64), rope_cache(3))()


def drive_embedding(module: StandInModule) -> None:
    family = Embedding(module)  # type: ignore[arg-type]
    rows = {
        GGMLQuantizationType.F32: 4 * 64,
        GGMLQuantizationType.F16: 2 * 64,
        GGMLQuantizationType.Q4_0: 2 * 18,
        GGMLQuantizationType.Q4_1: 2 * 20,
        GGMLQuantizationType.Q8_0: 2 * 34,
    }
    for table_type, row_bytes in rows.items():
        table = device_array((10, row_bytes), np.uint8)
        family.lookup(table, table_type, i32(3), f32(3, 64), previous=i32(1))


def drive_sampling(module: StandInModule) -> None:
    family = Sampling(module)  # type: ignore[arg-type]
    family.sample(f32(2, 100), device_array((2,), ROW_PARAMS_DTYPE), i32(2))


def drive_attention(module: StandInModule) -> None:
    family = Attention(module)  # type: ignore[arg-type]
    tokens, q_heads, kv_heads, head_dim = 2, 8, 2, 128
    cache = device_array((64, kv_heads, head_dim), np.float16)
    arrays = (f32(tokens, (q_heads + 2 * kv_heads) * head_dim), cache, cache)
    arrays += (i32(tokens), i32(tokens), i32(1, 4), f32(tokens, q_heads * head_dim))
    splits = choose_splits(tokens, kv_heads, 132, 4096)
    family.attention_launch(
        *arrays,
        16,
        splits,
        f32(partials_size(tokens, q_heads, head_dim, splits)),
        i32(counters_size(tokens, kv_heads)),
    )()
    family.rows_launch(*arrays, 16)()


def drive_quant_gemm(module: StandInModule) -> None:
    family = QuantGemm(module, H100)  # type: ignore[arg-type]
    workspace = device_array((family.max_workspace_bytes,), np.uint8)
    for quant in QuantType:
        weight = device_array((256, quant.row_bytes(512)), np.uint8)
        family.gemm(weight, quant, f32(40, 512), f32(40, 256), workspace=workspace)
        family.gemm_launch(weight, quant, f32(8, 512), f32(8, 256), splits=2, workspace=workspace)()


def drive_quant_gemv(module: StandInModule) -> None:
    family = QuantGemv(module, 227 * 1024, 132)  # type: ignore[arg-type]
    for quant in QuantType:
        for batch in (1, 2, 4, 8):
            k, n = 256, 64
            weight = device_array((3 * 2 * n, quant.row_bytes(k)), np.uint8)
            norm = RmsNorm(f32(k), 1e-5, f32(batch, k // 32))
            family.gemv_launch(weight, quant, f32(batch, k), f32(batch, 3 * 2 * n))()
            family.gemv_launch(
                weight, quant, f32(batch, k), f32(batch, 3 * n), norm=norm, output=Output.SWIGLU
            )()
            family.gemv_launch(
                weight,
                quant,
                f32(batch, k),
                f32(batch, 6 * 64),
                norm=norm,
                output=Output.ROPE,
                rope=rope_cache(batch, 2, 2, 64),
            )()


def drive_quant_mmq(module: StandInModule) -> None:
    family = QuantMmq(module, H100)  # type: ignore[arg-type]
    m, k, n = 70, 512, 200
    workspace = device_array((workspace_bytes(m, k),), np.uint8)
    for quant in MMQ_TYPES:
        weight = device_array((n, quant.row_bytes(k)), np.uint8)
        for launch in family.launches(weight, quant, f32(m, k), f32(m, n), workspace):
            launch()
        for tile in MmqTile:
            family.gemm_launch(
                weight, quant, f32(m, k), f32(m, n + 9), workspace, y_at=9, tile=tile
            )()


def drive_synthetic(module: StandInModule) -> None:
    family = Synthetic(module)  # type: ignore[arg-type]
    for quant in QuantType:
        family.fill_quant(device_array((4, quant.block_bytes), np.uint8), quant, 7, 0.5, None)  # type: ignore[arg-type]
    family.fill_f32(f32(100), 7, -1.0, 1.0, None)  # type: ignore[arg-type]


DRIVERS: dict[str, Callable[[StandInModule], None]] = {
    "attention": drive_attention,
    "elementwise": drive_elementwise,
    "embedding": drive_embedding,
    "norm": drive_norm,
    "quant_gemm": drive_quant_gemm,
    "quant_gemv": drive_quant_gemv,
    "quant_mmq": drive_quant_mmq,
    "rope": drive_rope,
    "sampling": drive_sampling,
    "synthetic": drive_synthetic,
}


def test_every_family_has_a_driver() -> None:
    assert sorted(DRIVERS) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_every_launch_fits_its_kernels_parameters(family: str) -> None:
    module = StandInModule()
    DRIVERS[family](module)
    interface = family_interface(family)
    # The wrapper resolves each kernel its .cu exports, with the parameters exported...
    assert set(module.kernels) == set(interface.kernels)
    for name, kernel in module.kernels.items():
        assert tuple(p.name for p in kernel.signature) == interface.kernels[name], name
    # ... and a launch of each distinct parameter list packed (StandInKernel.launch).
    signatures = {kernel.signature for kernel in module.kernels.values()}
    assert signatures == {module.kernels[name].signature for name in launched(module)}


def test_gemv_fusion_bytes_carry_each_field_where_the_kernel_reads_it() -> None:
    module = StandInModule()
    family = QuantGemv(module, 227 * 1024, 132)  # type: ignore[arg-type]
    k, batch = 256, 2
    weight = device_array((6 * 64, QuantType.Q8_0.row_bytes(k)), np.uint8)
    norm = RmsNorm(f32(k), 1e-5, f32(batch, k // 32))
    rope = rope_cache(batch, 2, 2, 64)
    launch = family.gemv_launch(
        weight,
        QuantType.Q8_0,
        f32(batch, k),
        f32(batch, 6 * 64),
        norm=norm,
        output=Output.ROPE,
        rope=rope,
    )
    fusion = launch.args[-2]
    assert isinstance(fusion, bytes)
    layout = family_interface("quant_gemv").struct("gemv_fusion")
    formats = {"PTR": "<Q", "I32": "<i", "F32": "<f"}
    read = {
        f.name: np.frombuffer(fusion, formats[f.type][1], 1, f.offset).item()
        if f.type != "PTR"
        else int.from_bytes(fusion[f.offset : f.offset + 8], "little")
        for f in layout.fields
    }
    assert read["out"] == Output.ROPE
    assert read["norm_weight"] == norm.weight.ptr and read["norm_partials"] == norm.partials.ptr
    assert read["eps"] == pytest.approx(1e-5) and read["out_partials"] == 0
    assert read["positions"] == rope.positions.ptr and read["slots"] == rope.slots.ptr
    assert read["k_cache"] == rope.k_cache.ptr and read["v_cache"] == rope.v_cache.ptr
    assert (read["n_q_heads"], read["n_kv_heads"], read["head_dim"], read["rot_dim"]) == (
        2,
        2,
        64,
        64,
    )
    assert read["inv_freq"] == rope.inv_freq.ptr
    assert rope.bias is not None and read["bias"] == rope.bias.ptr
    plain = family.gemv_launch(weight, QuantType.Q8_0, f32(batch, k), f32(batch, 6 * 64))
    assert plain.args[-2] == bytes(GemvFusion(out=0))
    assert plain.args[-1] == bytes(GemvOutputAt(y_stride=6 * 64, row_offset=0))


def test_a_gemv_or_gemm_into_part_of_y_starts_at_its_column_with_y_s_stride() -> None:
    """A part of a stacked matrix (v rows of q|k|v in a type of their own): y's address moved
    to the part's first column, y's row stride and, for the rope epilogue, the stack row."""
    module = StandInModule()
    gemv = QuantGemv(module, 227 * 1024, 132)  # type: ignore[arg-type]
    k, batch = 256, 2
    v_rows = device_array((2 * 64, QuantType.Q6_K.row_bytes(k)), np.uint8)
    x, qkv = f32(batch, k), f32(batch, 6 * 64)
    rope = rope_cache(batch, 2, 2, 64)
    launch = gemv.gemv_launch(
        v_rows, QuantType.Q6_K, x, qkv, output=Output.ROPE, rope=rope, y_at=4 * 64
    )
    assert launch.args[2] == qkv.ptr + 4 * 4 * 64 and launch.args[3] == 2 * 64
    assert launch.args[-1] == bytes(GemvOutputAt(y_stride=6 * 64, row_offset=4 * 64))
    with pytest.raises(ValueError, match="whole heads"):
        gemv.gemv_launch(v_rows, QuantType.Q6_K, x, qkv, output=Output.ROPE, rope=rope, y_at=32)
    with pytest.raises(ValueError, match="do not fit"):  # past y's last column
        gemv.gemv_launch(v_rows, QuantType.Q6_K, x, qkv, y_at=5 * 64)
    with pytest.raises(ValueError, match="sums of squares"):
        gemv.gemv_launch(v_rows, QuantType.Q6_K, x, qkv, y_at=0, sums_of_squares=f32(batch, 12))
    gemm = QuantGemm(module, H100)  # type: ignore[arg-type]
    rows = 40
    part = gemm.gemm_launch(v_rows, QuantType.Q6_K, f32(rows, k), f32(rows, 6 * 64), y_at=4 * 64)
    assert part.args[2] % 4 == 0 and part.args[-1] == 6 * 64


def test_a_neox_rope_gemv_runs_the_paired_epilogue_and_q_k_norms_are_refused() -> None:
    module = StandInModule()
    family = QuantGemv(module, 227 * 1024, 132)  # type: ignore[arg-type]
    k, batch = 256, 2
    weight = device_array((6 * 64, QuantType.Q8_0.row_bytes(k)), np.uint8)
    x, y = f32(batch, k), f32(batch, 6 * 64)
    launch = family.gemv_launch(
        weight, QuantType.Q8_0, x, y, output=Output.ROPE, rope=rope_cache(batch, 2, 2, 64, True)
    )
    layout = family_interface("quant_gemv").struct("gemv_fusion")
    out = next(f for f in layout.fields if f.name == "out")
    fusion = launch.args[-2]
    assert isinstance(fusion, bytes)
    assert int.from_bytes(fusion[out.offset : out.offset + 4], "little") == Output.ROPE_NEOX
    normed = replace(rope_cache(batch, 2, 2, 64), qk_norm=f32(2, 64))
    with pytest.raises(ValueError, match="q/k norms"):
        family.gemv_launch(weight, QuantType.Q8_0, x, y, output=Output.ROPE, rope=normed)
    with pytest.raises(ValueError, match=r"pass Output\.ROPE"):
        family.gemv_launch(weight, QuantType.Q8_0, x, y, output=Output.ROPE_NEOX)


def test_rope_prologue_checks_its_optional_weights() -> None:
    family = Rope(StandInModule())  # type: ignore[arg-type]
    qkv = f32(3, 8 * 64)
    good = rope_cache(3)
    launch = family.qkv_cache_launch(qkv, good)
    args = RopeQkvArgs.from_buffer_copy(launch.args[-1])
    assert (args.neox, args.rot_dim, args.head_dim, args.qk_norm) == (0, 64, 64, None)
    assert good.bias is not None and args.bias == good.bias.ptr
    wrong_bias = replace(good, bias=f32(7))
    with pytest.raises(ValueError, match=r"float32 bias \[512\]"):
        family.qkv_cache_launch(qkv, wrong_bias)
    wrong_norm = replace(good, qk_norm=f32(64))
    with pytest.raises(ValueError, match=r"q/k norm weight \[2, 64\]"):
        family.qkv_cache_launch(qkv, wrong_norm)
    too_long = replace(good, inv_freq=device_array((33,), np.float64))
    with pytest.raises(ValueError, match="rot_dim 66 <= head_dim 64"):
        family.qkv_cache_launch(qkv, too_long)


# (max shared per block, SMs, type, N, K, batch, output) -> (grid, block, dynamic shared), as
# the wrapper chose them before its constants came from the manifest (commit fdbf041): the
# launches, and so the sums' order, must not change.
GEMV_GEOMETRY = [
    ((232448, 132, "Q4_0", 4096, 4096, 1, "STORE"), (128, 512, 153600)),
    ((232448, 132, "Q4_0", 28672, 4096, 1, "SWIGLU"), (896, 64, 19200)),
    ((232448, 132, "Q4_1", 4096, 14336, 3, "STORE"), (128, 256, 94208)),
    ((232448, 132, "Q8_0", 128256, 4096, 8, "STORE"), (4008, 256, 163840)),
    ((232448, 132, "Q8_0", 576, 576, 1, "STORE"), (18, 96, 56448)),
    ((166912, 108, "Q4_0", 3072, 576, 5, "SWIGLU"), (96, 96, 39936)),
    ((166912, 108, "Q4_1", 960, 96, 2, "STORE"), (30, 32, 12032)),
    ((101376, 46, "Q8_0", 4096, 4096, 8, "STORE"), (128, 128, 81920)),
    ((101376, 46, "Q4_0", 64, 160, 1, "STORE"), (2, 32, 10624)),
    ((101376, 46, "Q4_1", 28672, 4096, 2, "SWIGLU"), (896, 256, 88064)),
]


@pytest.mark.parametrize(("case", "expected"), GEMV_GEOMETRY)
def test_gemv_launch_geometry_is_unchanged(
    case: tuple[int, int, str, int, int, int, str], expected: tuple[int, int, int]
) -> None:
    max_shared, multiprocessors, quant_name, n, k, batch, output_name = case
    family = QuantGemv(StandInModule(), max_shared, multiprocessors)  # type: ignore[arg-type]
    quant, output = QuantType[quant_name], Output[output_name]
    cols = n // 2 if output is Output.SWIGLU else n
    weight = device_array((n, quant.row_bytes(k)), np.uint8)
    launch = family.gemv_launch(weight, quant, f32(batch, k), f32(batch, cols), output=output)
    assert (launch.grid[0], launch.block[0], launch.shared_mem) == expected


def test_gemm_layouts_match_the_tiles() -> None:
    layouts = tile_layouts(227 * 1024)
    assert set(layouts) == {(q, t) for q in QuantType for t in GemmTile}
    # A K-quant's W step is a whole super-block (x goes in parts of it on the tall tiles): every
    # tile runs on an H100 but W64, whose 256 rows of Q5_K or Q6_K super-blocks fit two stages
    # only in more than the half of an SM that its two blocks may take.
    traps = {(QuantType.Q5_K, GemmTile.W64), (QuantType.Q6_K, GemmTile.W64)}
    for (quant, tile), layout in layouts.items():
        assert (layout.per_sm >= 1) == ((quant, tile) not in traps), (quant, tile, layout)
        assert layout.shared_bytes <= 227 * 1024 or (quant, tile) in traps, (quant, tile)
    # Two blocks of the tall tiles an SM, as the 32-weight types run them.
    for quant in (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K):
        for tile in (GemmTile.T64, GemmTile.T128):
            assert layouts[quant, tile].per_sm == 2, (quant, tile, layouts[quant, tile])


@pytest.mark.parametrize("quant", [q for q in QuantType if q.unit_format], ids=lambda q: q.name)
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (28672, 4096), (4096, 14336), (300, 768)])
def test_new_formats_gemv_geometry_ignores_the_batch(quant: QuantType, n: int, k: int) -> None:
    """The warps of a block set a row's order of summation: for the new formats they are the
    same at every batch (issue 21), on an H100's and an A10's shared memory."""
    for max_shared, multiprocessors in ((232448, 132), (101376, 72)):
        family = QuantGemv(StandInModule(), max_shared, multiprocessors)  # type: ignore[arg-type]
        weight = device_array((n, quant.row_bytes(k)), np.uint8)
        shapes = {
            family.gemv_launch(weight, quant, f32(batch, k), f32(batch, n)).block
            for batch in range(1, 9)
        }
        assert len(shapes) == 1, (quant, n, k, shapes)


def test_struct_mirrors_match_their_kernels_structs() -> None:
    assert family_interface("quant_gemv").check_mirror(GemvFusion) == StructArg(
        "gemv_fusion", ctypes.sizeof(GemvFusion), 8
    )
    check_row_params()


# --- what does not fit is refused -------------------------------------------------------------


def quant_gemv_ptx() -> str:
    return (BIN_DIR / "quant_gemv.compute_80.ptx").read_text()


def test_a_parameter_of_another_type_than_exported_is_refused() -> None:
    ptx = quant_gemv_ptx().replace(
        ".param .u32 quant_gemv_q4_0_b2_param_4", ".param .f32 quant_gemv_q4_0_b2_param_4"
    )
    with pytest.raises(CudaError, match=r"quant_gemv_q4_0_b2: parameter 4 is \.f32 .* but I32"):
        FamilyInterface.from_ptx("quant_gemv", ptx)


def test_a_parameter_missing_from_the_entry_is_refused() -> None:
    ptx = re.sub(r"\s*\.param \.u32 quant_gemv_q8_0_b1_param_5,", "", quant_gemv_ptx())
    with pytest.raises(CudaError, match=r"quant_gemv_q8_0_b1 takes 7 parameters .* lists 8"):
        FamilyInterface.from_ptx("quant_gemv", ptx)


def test_a_struct_of_another_size_is_refused() -> None:
    size = family_interface("quant_gemv").struct("gemv_fusion").size
    ptx = quant_gemv_ptx().replace(
        f"quant_gemv_q4_1_b4_param_6[{size}]", f"quant_gemv_q4_1_b4_param_6[{size + 8}]"
    )
    with pytest.raises(CudaError, match=r"parameter 6 is \.b8\[\d+\] .* struct gemv_fusion"):
        FamilyInterface.from_ptx("quant_gemv", ptx)


def test_a_kernel_without_exported_parameters_is_refused() -> None:
    ptx = (BIN_DIR / "rope.compute_80.ptx").read_text()
    ptx = re.sub(r"^.*ember_params_rope_f32\[.*$", "", ptx, flags=re.MULTILINE)
    with pytest.raises(CudaError, match=r"rope_f32 has no EMBER_EXPORT_PARAMS\(rope_f32\)"):
        FamilyInterface.from_ptx("rope", ptx)


class SwappedFusion(KernelStruct):
    exported_as = "gemv_fusion"
    _fields_ = (*GemvFusion._fields_[:10], ("eps", ctypes.c_int32), *GemvFusion._fields_[11:])


def test_a_mirror_that_differs_is_refused() -> None:
    interface = family_interface("quant_gemv")
    with pytest.raises(CudaError, match=r"SwappedFusion .* field 10 is eps \(I32.* eps \(F32"):
        interface.check_mirror(SwappedFusion)
    with pytest.raises(CudaError, match=r"SwappedFusion .* field 10"):
        interface.signature("quant_gemv_q4_0_b1", SwappedFusion)
    with pytest.raises(CudaError, match="passes no mirror"):
        interface.signature("quant_gemv_q4_0_b1")
    bad_dtype = np.dtype([(n, "<f4" if n == "top_k" else t) for n, t in ROW_PARAMS_DTYPE.descr])
    with pytest.raises(CudaError, match="field 1 is top_k \\(F32"):
        family_interface("sampling").struct("row_params").check("dtype", dtype_of(bad_dtype), 32)


def dtype_of(dtype: np.dtype[Any]) -> Any:
    from ember.kernels.interface import dtype_fields

    return dtype_fields(dtype)


# --- the load-time check against the driver's cuFuncGetParamInfo, with a stand-in driver ------


class StandInDriver:
    """cuFuncGetParamInfo over a given image layout [(offset, size), ...]."""

    class CUresult:
        CUDA_SUCCESS = 0
        CUDA_ERROR_INVALID_VALUE = 1

    def __init__(self, image: list[tuple[int, int]]) -> None:
        self.image = image

    def cuFuncGetParamInfo(self, function: Any, index: int) -> tuple[int, int, int]:  # noqa: N802
        if index >= len(self.image):
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE, 0, 0)
        return (self.CUresult.CUDA_SUCCESS, *self.image[index])


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[tuple[int, int]]], None]]:
    def install(image: list[tuple[int, int]]) -> None:
        monkeypatch.setattr(gpu_module, "api", lambda: StandInDriver(image))

    yield install


def test_the_image_check_passes_a_matching_kernel(driver: Any) -> None:
    signature = family_interface("quant_gemv").signature(
        "quant_gemv_q4_0_b1", GemvFusion, GemvOutputAt
    )
    fusion_end = 40 + ctypes.sizeof(GemvFusion)
    driver(
        [(0, 8), (8, 8), (16, 8), (24, 4), (28, 4), (32, 4), (40, ctypes.sizeof(GemvFusion))]
        + [(fusion_end, ctypes.sizeof(GemvOutputAt))]
    )
    gpu_module.check_image_params(None, "kernel quant_gemv_q4_0_b1", signature)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ([(0, 8), (8, 4), (16, 4)], r"parameter 1 is 4 bytes at offset 8 in the image, but I64"),
        ([(0, 8), (8, 8)], r"takes 2 parameters in the image, but its signature has 3"),
        ([(0, 8), (8, 8), (16, 4), (20, 4)], r"takes more than the 3 parameters"),
    ],
)
def test_the_image_check_names_the_kernel_and_parameter(
    driver: Any, image: list[tuple[int, int]], message: str
) -> None:
    driver(image)
    with pytest.raises(CudaError, match=message) as caught:
        gpu_module.check_image_params(None, "kernel k of test", (Arg.PTR, Arg.I64, Arg.I32))
    assert "kernel k of test" in str(caught.value)


def test_attention_rows_kernels_cover_the_llama_shapes_and_refuse_what_they_lack() -> None:
    family = Attention(StandInModule())  # type: ignore[arg-type]
    assert family.rows_per_block(128, 4)[0] >= 2  # Llama 8B and Qwen3 8B
    assert family.rows_per_block(64, 4)[0] >= 4  # Llama 3.2 1B
    assert family.rows_per_block(64, 3)[0] >= 5  # SmolLM2
    tokens, q_heads, kv_heads, head_dim = 3, 16, 2, 128  # G = 8: no rows kernel
    cache = device_array((64, kv_heads, head_dim), np.float16)
    arrays = (f32(tokens, (q_heads + 2 * kv_heads) * head_dim), cache, cache)
    arrays += (i32(tokens), i32(tokens), i32(1, 4), f32(tokens, q_heads * head_dim))
    with pytest.raises(ValueError, match="no rows kernel of any tokens for head_dim 128 with 8"):
        family.rows_launch(*arrays, 16)
    cache = device_array((64, 4, head_dim), np.float16)
    arrays = (f32(tokens, 24 * head_dim), cache, cache)
    arrays += (i32(tokens), i32(tokens), i32(1, 4), f32(tokens, 16 * head_dim))
    with pytest.raises(ValueError, match="no rows kernel of 3 tokens"):
        family.rows_launch(*arrays, 16, rows=3)
