"""ember.gpu.module: which image a device loads, and loading it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ember.errors import CudaError
from ember.gpu import Arg, Context, DeviceArray, Module
from ember.gpu.device import Device
from ember.gpu.module import SHIPPED_SMS, cubin_filename, ptx_filename, select_image
from ember.kernels.binaries import BIN_DIR, load_family
from ember.kernels.elementwise import Elementwise
from ember.kernels.interface import family_interface
from ember.kernels.quant_gemv import GemvFusion

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = sorted(path.stem for path in BIN_DIR.parent.glob("*.cu"))


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    for sm in (80, 86, 89, 90):
        (tmp_path / cubin_filename("k", sm)).write_bytes(b"\x7fELF")
    (tmp_path / ptx_filename("k")).write_text("//")
    return tmp_path


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ((8, 0), "k.sm_80.cubin"),
        ((8, 6), "k.sm_86.cubin"),
        ((8, 7), "k.sm_86.cubin"),  # Orin: sm_86 code runs on 8.7
        ((8, 9), "k.sm_89.cubin"),
        ((9, 0), "k.sm_90.cubin"),
        ((10, 0), "k.compute_80.ptx"),  # Blackwell: no cubin runs across majors
        ((12, 0), "k.compute_80.ptx"),
    ],
)
def test_select_image(shipped: Path, capability: tuple[int, int], expected: str) -> None:
    assert select_image(shipped, "k", capability).name == expected


def test_select_image_without_cubins_falls_back_to_ptx(shipped: Path) -> None:
    (shipped / cubin_filename("k", 90)).unlink()
    assert select_image(shipped, "k", (9, 0)).name == "k.compute_80.ptx"


def test_select_image_errors(shipped: Path) -> None:
    with pytest.raises(CudaError, match="too old"):
        select_image(shipped, "k", (7, 5))
    with pytest.raises(CudaError, match=r"build_kernels\.py"):
        select_image(shipped, "missing", (9, 0))


def test_every_shipped_family_has_all_images() -> None:
    for source in BIN_DIR.parent.glob("*.cu"):
        family = source.stem
        for sm in (80, 86, 89, 90):
            assert (BIN_DIR / cubin_filename(family, sm)).is_file()
        assert (BIN_DIR / ptx_filename(family)).is_file()


@pytest.mark.gpu
def test_cubin_and_jit_ptx_compute_the_same(context: Context, device: Device) -> None:
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(10_001).astype(np.float32) for _ in range(2))
    results = []
    cubin = Module.load(BIN_DIR, "elementwise", device)
    if device.sm in SHIPPED_SMS:
        assert cubin.source.endswith(cubin_filename("elementwise", device.sm))
    ptx = Module.from_image((BIN_DIR / ptx_filename("elementwise")).read_bytes(), source="ptx")
    for module in (cubin, ptx):
        with (
            DeviceArray.from_numpy(a) as da,
            DeviceArray.from_numpy(b) as db,
            DeviceArray.empty(a.shape, np.float32) as out,
        ):
            out.buffer.memset_d32(0xFFFFFFFF)
            Elementwise(module).vector_add(da, db, out)
            results.append(out.to_numpy())
        module.unload()
    np.testing.assert_array_equal(results[0], a + b)
    np.testing.assert_array_equal(results[1], a + b)


@pytest.mark.gpu
def test_bad_image_and_missing_function(context: Context) -> None:
    with pytest.raises(CudaError) as caught:
        Module.from_image(b"this is not PTX", source="junk")
    assert caught.value.name is not None and "junk" in str(caught.value)
    with Module.load(BIN_DIR, "elementwise", Device.get(0)) as module:
        with pytest.raises(CudaError) as missing:
            module.function("no_such_kernel", ())
        assert missing.value.name == "CUDA_ERROR_NOT_FOUND"


@pytest.mark.gpu
def test_a_signature_that_does_not_fit_the_image_is_refused(context: Context) -> None:
    image = (FIXTURES / "scalar_args.ptx").read_bytes()
    right = (Arg.I32, Arg.I64, Arg.U32, Arg.F32, Arg.PTR)
    with Module.from_image(image, source="scalar_args.ptx") as module:
        with pytest.raises(CudaError, match=r"store_scalars of scalar_args\.ptx: parameter 1 is 8"):
            module.function("store_scalars", (Arg.I32, Arg.I32, Arg.U32, Arg.F32, Arg.PTR))
        with pytest.raises(CudaError, match=r"store_scalars .* takes 5 parameters in the image"):
            module.function("store_scalars", (*right, Arg.I32))
        with pytest.raises(CudaError, match="more than the 4 parameters of its signature"):
            module.function("store_scalars", right[:4])
        assert module.function("store_scalars", right).signature == right


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("image", ["cubin", "ptx"])
def test_every_kernel_takes_the_parameters_its_cu_exports(
    context: Context, device: Device, family: str, image: str
) -> None:
    """Each kernel of the manifest, checked by cuFuncGetParamInfo against the device's cubin
    and against the PTX as the driver compiles it (what GPUs newer than the cubins run)."""
    if image == "cubin":
        module = load_family(family, device)
    else:
        module = Module.from_image((BIN_DIR / ptx_filename(family)).read_bytes(), source="ptx")
    with module:
        interface = family_interface(family)
        for name in interface.kernels:
            interface.kernel(module, name, GemvFusion)
