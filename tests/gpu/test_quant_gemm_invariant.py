"""quant_gemm's batch-invariant plans: a row's output bits alone and among other rows, at every
row count, tile and way of running K's shares (splits or slices); the plans themselves on the
CPU."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from ember.errors import EmberError
from ember.gpu import DeviceArray, Stream
from ember.kernels.quant_gemm import (
    DEFAULT_RESIDENCY,
    INVARIANT_TILES,
    INVARIANT_TYPES,
    GemmPlan,
    GemmTile,
    QuantGemm,
    choose_invariant_plan,
    invariant_shares,
    tile_layouts,
    type_residency,
)
from ember.kernels.quant_gemv import QuantType
from tests.gpu.quant_data import random_weight
from tests.gpu.test_quant_gemm import Reference

gpu = pytest.mark.gpu

H100_SMS = 132
# (N, K): the small model's q/o, its head, Llama 8B's o and down; ragged N and K (1, 3 blocks).
SHAPES = [(576, 576), (49152, 576), (4096, 4096), (4096, 14336), (1003, 96), (37, 1056)]
# Alone, then inside batches of each GEMV tier's and GEMM tile's sizes and beyond (the engine's
# buckets run up to 512 and more).
BATCHES = (1, 2, 7, 8, 16, 17, 32, 33, 64, 200, 256, 512)


@pytest.mark.parametrize("n, k", SHAPES)
def test_shares_follow_the_weight_not_the_rows(n: int, k: int) -> None:
    shares = invariant_shares(n, k, H100_SMS, DEFAULT_RESIDENCY[GemmTile.S16])
    for m in BATCHES:
        plan = choose_invariant_plan(m, n, k, H100_SMS, workspace_bytes=1 << 30)
        assert plan.slices == shares, f"m {m}: {plan.slices} K shares, not {shares}"
        assert plan.splits in (1, shares)
        assert plan.tile is next(t for rows, t in INVARIANT_TILES if m <= rows)


def test_small_products_split_k_when_the_workspace_holds_it() -> None:
    shares = invariant_shares(576, 576, H100_SMS, DEFAULT_RESIDENCY[GemmTile.S16])
    assert shares > 1  # 5 tiles of 128 columns on 132 SMs
    assert choose_invariant_plan(1, 576, 576, H100_SMS, workspace_bytes=1 << 30) == GemmPlan(
        GemmTile.S16, shares, shares
    )
    # Without a workspace the same shares run as slices of one block.
    assert choose_invariant_plan(1, 576, 576, H100_SMS) == GemmPlan(GemmTile.S16, 1, shares)
    # A prefill's tiles fill the GPU: slices, whatever the workspace.
    assert choose_invariant_plan(4096, 4096, 4096, H100_SMS, workspace_bytes=1 << 30) == GemmPlan(
        GemmTile.T64, 1, invariant_shares(4096, 4096, H100_SMS, 2)
    )


def test_super_block_types_run_t64_above_32_rows() -> None:
    """A K-quant's W step is a whole super-block in every tile; T64 computes it in parts of x
    (quant_gemm.cu), so it runs the same invariant tiles as the 32-weight types on an H100."""
    layouts = tile_layouts(227 * 1024)
    for quant in (QuantType.Q4_K, QuantType.Q5_K, QuantType.Q6_K):
        residency = type_residency(layouts, quant)
        shares = invariant_shares(4096, 4096, H100_SMS, residency[GemmTile.S16])
        for m, tile in (
            (1, GemmTile.S16),
            (17, GemmTile.S32),
            (33, GemmTile.T64),
            (512, GemmTile.T64),
        ):
            plan = choose_invariant_plan(m, 4096, 4096, H100_SMS, residency)
            assert plan.tile is tile and plan.slices == shares, (quant, m, plan)


def test_invariant_plan_needs_its_tiles() -> None:
    residency = {t: 2 for t in GemmTile if t is not GemmTile.S32}
    with pytest.raises(EmberError, match="S32"):
        choose_invariant_plan(1, 576, 576, H100_SMS, residency)


@pytest.fixture
def workspace(quant_gemm: QuantGemm, stream: Stream) -> Iterator[DeviceArray]:
    with DeviceArray.empty((quant_gemm.max_workspace_bytes,), np.uint8) as space:
        space.buffer.memset_d32(0, stream)
        yield space


def invariant_rows(
    quant_gemm: QuantGemm,
    weight: DeviceArray,
    quant: QuantType,
    x: npt.NDArray[np.float32],
    stream: Stream,
    workspace: DeviceArray | None,
    **overrides: object,
) -> npt.NDArray[np.float32]:
    """y = x @ W.T by the invariant plan (parts overridden), from a NaN-filled y."""
    with (
        DeviceArray.from_numpy(x) as dx,
        DeviceArray.empty((x.shape[0], weight.shape[0]), np.float32) as dy,
    ):
        launch = quant_gemm.gemm_launch(
            weight,
            quant,
            dx,
            dy,
            workspace=workspace,
            invariant=True,
            **overrides,  # type: ignore[arg-type]
        )
        dy.buffer.memset_d32(0xFFFFFFFF, stream)
        launch(stream)
        stream.synchronize()
        return dy.to_numpy()


@gpu
@pytest.mark.parametrize("quant", INVARIANT_TYPES)
@pytest.mark.parametrize("n, k", SHAPES)
def test_a_row_has_the_same_bits_alone_and_in_any_batch(
    quant_gemm: QuantGemm, stream: Stream, workspace: DeviceArray, quant: QuantType, n: int, k: int
) -> None:
    rng = np.random.default_rng(n * 7 + k)
    raw = random_weight(quant, n, k, seed=n + k)
    row = rng.standard_normal((1, k)).astype(np.float32)
    with DeviceArray.from_numpy(raw) as dw:
        alone = invariant_rows(quant_gemm, dw, quant, row, stream, workspace)
        Reference.of(raw, quant, row).check(alone, f"{quant.name} {n}x{k} alone")
        for m in BATCHES[1:]:
            x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10.0)
            at = int(rng.integers(0, m))
            x[at] = row[0]
            got = invariant_rows(quant_gemm, dw, quant, x, stream, workspace)
            assert np.array_equal(got[at].view(np.uint32), alone[0].view(np.uint32)), (
                f"{quant.name} {n}x{k}: row {at} of {m} differs from the row alone in "
                f"{np.count_nonzero(got[at] != alone[0])} of {n} outputs"
            )


@gpu
@pytest.mark.parametrize("quant", INVARIANT_TYPES)
@pytest.mark.parametrize("n, k", [(576, 576), (4096, 4096), (37, 1056)])
def test_every_tile_and_way_of_running_the_shares_gives_the_same_bits(
    quant_gemm: QuantGemm, stream: Stream, workspace: DeviceArray, quant: QuantType, n: int, k: int
) -> None:
    rng = np.random.default_rng(k)
    raw = random_weight(quant, n, k, seed=n)
    x = rng.standard_normal((16, k)).astype(np.float32)
    with DeviceArray.from_numpy(raw) as dw:
        plan = quant_gemm.invariant_plan(quant, 16, n, k, workspace.nbytes)
        want = invariant_rows(quant_gemm, dw, quant, x, stream, workspace)
        Reference.of(raw, quant, x).check(want, f"{quant.name} {n}x{k} {plan}")
        for _, tile in INVARIANT_TILES:
            forms = [{"splits": 1}]
            if plan.slices > 1:
                forms.append({"splits": plan.slices})
            for form in forms:
                got = invariant_rows(quant_gemm, dw, quant, x, stream, workspace, tile=tile, **form)
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (
                    f"{quant.name} {n}x{k}: {tile.name} with {form} and {plan.slices} shares "
                    f"differs from {plan} in {np.count_nonzero(got != want)} outputs"
                )


def test_every_invariant_type_has_sliced_kernels_that_take_the_plain_ones_arguments() -> None:
    from ember.kernels.interface import family_interface

    gemm = family_interface("quant_gemm")
    assert set(INVARIANT_TYPES) == set(QuantType)
    for quant in INVARIANT_TYPES:
        for _, tile in INVARIANT_TILES:
            plain = f"quant_gemm_{quant.name.lower()}_{tile.name.lower()}"
            assert gemm.signature(plain + "_sliced") == gemm.signature(plain)
