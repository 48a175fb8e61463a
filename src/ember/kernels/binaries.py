"""Where Ember's prebuilt kernel images live, and loading one family of them onto a device."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from ember.gpu.device import Device
from ember.gpu.module import Module

# Built by scripts/build_kernels.py and shipped as package data (see pyproject.toml).
BIN_DIR: Final = Path(__file__).resolve().parent / "bin"
# Families whose every kernel calls common.cuh's await_prior_grid before touching memory, and
# so may be launched as programmatic dependents (tests/kernels/test_programmatic_launch.py).
AWAITING_FAMILIES: Final = frozenset(
    {"attention", "elementwise", "embedding", "norm", "quant_gemv", "quant_mmq", "rope", "sampling"}
)


def load_family(family: str, device: Device) -> Module:
    """Load `<family>.cu`'s image for `device` into the current context."""
    return Module.load(BIN_DIR, family, device, awaits_prior_grid=family in AWAITING_FAMILIES)
