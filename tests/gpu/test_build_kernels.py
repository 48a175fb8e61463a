"""scripts/build_kernels.py --check: passes on the committed artifacts, fails on a stale build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_kernels.py"
KERNELS = REPO / "src" / "ember" / "kernels"


def check(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", *extra],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def kernels_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "kernels"
    shutil.copytree(KERNELS, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return copy


def test_check_passes_on_committed_artifacts() -> None:
    # Hashes only: the byte-for-byte rebuild (minutes with nvcc on PATH) is .ci/run's own
    # `build_kernels.py --check`, run once there rather than twice.
    done = check("--no-rebuild")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok:")


@pytest.mark.parametrize(
    ("victim", "message"),
    [
        ("common.cuh", "common.cuh (included by elementwise.cu) changed"),
        ("elementwise.cu", "elementwise.cu changed since the last build"),
        ("bin/elementwise.sm_90.cubin", "does not match its hash"),
    ],
)
def test_check_fails_when_something_changed(kernels_copy: Path, victim: str, message: str) -> None:
    with (kernels_copy / victim).open("ab") as f:
        f.write(b"\n// edited\n")
    done = check("--no-rebuild", "--kernels-dir", str(kernels_copy))
    assert done.returncode == 1
    assert message in done.stdout
    assert "python3 scripts/build_kernels.py" in done.stdout


def test_check_fails_on_a_new_unbuilt_source(kernels_copy: Path) -> None:
    (kernels_copy / "extra.cu").write_text('#include "common.cuh"\n')
    done = check("--no-rebuild", "--kernels-dir", str(kernels_copy))
    assert done.returncode == 1
    assert "extra.cu was never built" in done.stdout
