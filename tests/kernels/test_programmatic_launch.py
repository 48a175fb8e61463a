"""Kernels launched as programmatic dependents must wait for the prior grid before they touch
global memory; otherwise they would read what the previous kernel has not yet written."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ember.kernels.binaries import AWAITING_FAMILIES

KERNELS = Path(__file__).resolve().parents[2] / "src" / "ember" / "kernels"
NVCC = shutil.which("nvcc")
# The first PTX instruction of each kind that reads or writes global (or generic) memory.
_MEMORY = re.compile(r"^\s*(?:@%p\d+\s+)?(ld|st|atom|red|cp\.async)\.(?!param|shared|local|const)")
# Memory a family may read before the wait: quant_gemv starts copying its weights into shared
# memory (cp.async) while the kernel before it runs; no kernel of a step writes weights.
_EARLY = {"quant_gemv": re.compile(r"^\s*(?:@%p\d+\s+)?cp\.async\.cg\.shared\.global")}


def entries(ptx: str) -> dict[str, list[str]]:
    """Each `.entry`'s body lines."""
    found: dict[str, list[str]] = {}
    for chunk in ptx.split(".entry ")[1:]:
        name = chunk.split("(", 1)[0].strip()
        found[name] = chunk.splitlines()
    return found


@pytest.mark.slow  # nvcc compiles each family (4-12 s)
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("family", sorted(AWAITING_FAMILIES))
def test_every_kernel_waits_before_touching_memory(family: str, tmp_path: Path) -> None:
    assert NVCC is not None
    out = tmp_path / f"{family}.ptx"
    cmd = [NVCC, "-O3", "-std=c++17", "--ptx", "-arch=sm_90", "-o", str(out), f"{family}.cu"]
    subprocess.run(cmd, cwd=KERNELS, check=True, capture_output=True)
    kernels = entries(out.read_text())
    assert kernels, f"no kernels found in {family}.cu"
    for name, lines in kernels.items():
        wait = next((i for i, line in enumerate(lines) if "griddepcontrol.wait" in line), None)
        assert wait is not None, f"{name} never waits for the prior grid"
        early = _EARLY.get(family)
        first = next(
            (
                i
                for i, line in enumerate(lines)
                if _MEMORY.match(line) and not (early and early.match(line))
            ),
            len(lines),
        )
        assert wait < first, f"{name} touches memory before waiting: {lines[first].strip()}"
