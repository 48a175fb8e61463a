"""`ember worker --gpus`'s plan: which GPUs, each child's command line and environment; and the
restart back-off it shares with `ember serve`'s engine supervisor. (The processes themselves:
tests/queue/test_worker_gpus.py.)"""

from __future__ import annotations

import asyncio
import io
import sys

import pytest

from ember.errors import CudaUnavailableError, EmberError
from ember.serve.gpu_workers import (
    GpuWorkerPlan,
    option_given,
    relay_lines,
    resolve_gpus,
    visible_device,
    without_options,
)
from ember.serve.restart_backoff import HEALTHY_UPTIME, RestartBackoff


def _two() -> int:
    return 2


def _no_driver() -> int:
    raise CudaUnavailableError("the NVIDIA driver reports no GPU; run with --device cpu")


def _plan(argv: tuple[str, ...], environment: dict[str, str] | None = None) -> GpuWorkerPlan:
    return GpuWorkerPlan(gpus=(0, 1), argv=argv, name="w", device="cuda",
                         environment=environment or {"PATH": "/bin"}, restart_clean_exits=True,
                         restart_backoff=0.5, max_restart_backoff=30.0, stop_timeout=60.0,
                         log_level="info")  # fmt: skip


def test_options_are_taken_off_in_every_spelling_argparse_accepts() -> None:
    argv = ["worker", "--gpus", "0,1", "--nats", "nats://h:4222", "--device=cpu", "--worker-name",
            "a", "--max-concurrent-jobs", "8", "--gpu=all", "--dev", "cuda"]  # fmt: skip
    assert without_options(argv, ("--gpus", "--device", "--worker-name")) == [
        "worker", "--nats", "nats://h:4222", "--max-concurrent-jobs", "8"]  # fmt: skip
    assert without_options(["worker", "--", "--gpus"], ("--gpus",)) == ["worker", "--", "--gpus"]
    assert option_given(["worker", "--device", "cpu"], "--device")
    assert option_given(["worker", "--devi=cpu"], "--device")
    assert not option_given(["worker", "--nats", "u", "--gpus", "0"], "--device")


def test_each_child_gets_its_gpu_its_name_and_the_users_other_flags() -> None:
    plan = _plan(("worker", "--gpus", "all", "--nats", "u", "--worker-name", "x", "--seed", "3"))
    own = ["--device", "cuda", "--worker-name", "w-gpu1"]
    assert plan.child_command(1) == [sys.executable, "-m", "ember", "worker", "--nats", "u",
                                     "--seed", "3", *own]  # fmt: skip
    assert plan.child_environment(1) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1"}
    narrowed = _plan(("worker",), {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert [narrowed.child_environment(g)["CUDA_VISIBLE_DEVICES"] for g in (0, 1)] == ["2", "3"]


def test_a_gpu_index_counts_within_the_supervisors_own_visible_devices() -> None:
    assert visible_device(3, None) == "3"
    assert visible_device(1, "GPU-aaa, GPU-bbb") == "GPU-bbb"
    with pytest.raises(EmberError, match="GPU 2 is not among CUDA_VISIBLE_DEVICES='4,5'"):
        visible_device(2, "4,5")


def test_gpus_all_asks_the_driver_and_without_one_says_what_to_do() -> None:
    assert resolve_gpus("all", "cuda", _two) == (0, 1)
    with pytest.raises(EmberError, match=r"--gpus all lists the GPUs through the CUDA driver.*"
                                         r"--gpus 0,1\) with --device cpu"):  # fmt: skip
        resolve_gpus("all", "cpu", _no_driver)


def test_a_gpu_list_is_checked_against_the_driver_unless_the_children_run_on_the_cpu() -> None:
    assert resolve_gpus("0,1", "cpu", _no_driver) == (0, 1)
    assert resolve_gpus("1", "cuda", _two) == (1,)
    with pytest.raises(EmberError, match="GPU 5 does not exist: the driver sees 2 GPU"):
        resolve_gpus("0,5", "cuda", _two)
    with pytest.raises(EmberError, match=r"CUDA is not usable here.*--device cpu"):
        resolve_gpus("0,1", "cuda", _no_driver)
    for bad in ("0,x", "", "0,,1"):
        with pytest.raises(EmberError, match="give `all` or GPU indices"):
            resolve_gpus(bad, "cpu", _two)
    for bad in ("1,1", "-1"):
        with pytest.raises(EmberError, match="distinct and >= 0"):
            resolve_gpus(bad, "cpu", _two)


def test_the_restart_delay_doubles_while_a_process_dies_young_and_resets_after_a_long_run() -> None:
    backoff = RestartBackoff(0.5, 3.0)
    assert [backoff.after_run(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.after_run(HEALTHY_UPTIME + 1) == 0.5
    assert backoff.after_run(1.0) == 1.0


def test_a_childs_output_is_relayed_line_by_line_after_its_prefix() -> None:
    async def relayed(data: bytes, limit: int) -> bytes:
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(data)
        reader.feed_eof()
        out = io.BytesIO()
        await relay_lines(reader, b"[GPU 1 pid 7] ", out)
        return out.getvalue()

    assert asyncio.run(relayed(b"one\ntwo\nlast", 64)) == (
        b"[GPU 1 pid 7] one\n[GPU 1 pid 7] two\n[GPU 1 pid 7] last\n")  # fmt: skip
    long = asyncio.run(relayed(b"x" * 100 + b"\nend\n", 16))
    assert long.replace(b"[GPU 1 pid 7] ", b"").replace(b"\n", b"") == b"x" * 100 + b"end"
    assert all(line.startswith(b"[GPU 1 pid 7] ") for line in long.splitlines())
