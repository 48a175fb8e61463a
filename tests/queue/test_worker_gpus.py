"""`ember worker --gpus 0,1 --device cpu` against a real nats-server: two worker processes under
one supervisor, each with only its own index in CUDA_VISIBLE_DEVICES, jobs spread over both,
`kill -9` of one under load, SIGTERM to the supervisor, exit at the idle timeout. (On the CPU
the children run the tiny model on the CPU; the supervisor still gives each its GPU.)"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from ember.cli import main
from ember.queue.job import JobStatus
from ember.queue.job_store import JobQueue
from ember.queue.layout import QueueSettings
from ember.queue.nats_server import EmbeddedNats
from tests.queue.queue_helpers import (
    TINY_MODEL,
    StoredResults,
    WorkerProcess,
    chat_body,
    submit_many,
    wait_until,
)

NAME = "spread"
# The child's own line (its pid and environment, as it sees them) and the supervisor's.
_CHILD_READY = re.compile(r"worker (\S+) \(pid (\d+), CUDA_VISIBLE_DEVICES=(\S+)\) takes jobs from")
_STARTED = re.compile(r"GPU (\d+): worker (\S+) started, pid (\d+) \(CUDA_VISIBLE_DEVICES=(\S+)\)")


def _supervisor(tmp_path: Path, url: str, *args: str) -> WorkerProcess:
    flags = ("--gpus", "0,1", "--device", "cpu", "--worker-name", NAME)
    return WorkerProcess(tmp_path, url, *flags, "--max-concurrent-jobs", "4", "--log-level",
                         "info", *args)  # fmt: skip


def _log(supervisor: WorkerProcess) -> str:
    return supervisor.log.read_text(errors="replace")


def _ready_children(supervisor: WorkerProcess) -> dict[str, tuple[int, str]]:
    """Each child's last start that reached its pull loop: name -> (pid, CUDA_VISIBLE_DEVICES)."""
    found = {name: (int(pid), visible) for name, pid, visible in
             _CHILD_READY.findall(_log(supervisor))}  # fmt: skip
    return found


def _started(supervisor: WorkerProcess) -> list[tuple[int, str, int, str]]:
    return [(int(gpu), name, int(pid), visible)
            for gpu, name, pid, visible in _STARTED.findall(_log(supervisor))]  # fmt: skip


async def _both_ready(supervisor: WorkerProcess) -> dict[str, tuple[int, str]]:
    await wait_until(lambda: len(_ready_children(supervisor)) == 2 or supervisor.process.poll()
                     is not None, 120, "both workers ready")  # fmt: skip
    assert supervisor.process.poll() is None, supervisor.output()
    return _ready_children(supervisor)


def _environment_variable(pid: int, name: str) -> str | None:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    values = [e.split(b"=", 1)[1].decode() for e in entries if e.startswith(name.encode() + b"=")]
    return values[0] if values else None


def _descendants(pid: int) -> set[int]:
    """`pid`'s children, theirs, and so on (the children's engine processes included)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def _stop(supervisor: WorkerProcess) -> None:
    """SIGTERM to the supervisor: it exits 0 and leaves no process behind."""
    processes = _descendants(supervisor.process.pid)
    assert len(processes) >= 4, processes  # two workers and their engine processes
    supervisor.terminate()
    assert await supervisor.wait(90) == 0, supervisor.output()
    await wait_until(lambda: not any(map(_alive, processes)), 5, "no worker left")


@pytest.mark.slow
def test_each_worker_sees_only_its_gpu_and_100_jobs_spread_over_both(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    async def run() -> None:
        queue = await JobQueue.connect(nats.url)
        stores = await StoredResults().start(nats.url)
        supervisor = _supervisor(tmp_path, nats.url)
        try:
            children = await _both_ready(supervisor)
            assert {name: visible for name, (_, visible) in children.items()} == {
                f"{NAME}-gpu0": "0", f"{NAME}-gpu1": "1"}  # fmt: skip
            for pid, visible in children.values():
                assert _environment_variable(pid, "CUDA_VISIBLE_DEVICES") == visible
            # The supervisor's log names the same processes.
            named = [(int(gpu), name, pid, gpu) for name, (pid, gpu) in children.items()]
            assert sorted(_started(supervisor)) == sorted(named)
            # Every line a child writes comes out after its GPU and pid.
            prefixed = re.findall(r"^\[GPU (\d) pid (\d+)\] .* worker (\S+) \(pid (\d+)",
                                  _log(supervisor), re.MULTILINE)  # fmt: skip
            expected = [(gpu, str(pid), name, str(pid)) for name, (pid, gpu) in children.items()]
            assert sorted(prefixed) == sorted(expected)

            ids = await submit_many(queue, [chat_body(i) for i in range(100)])
            await wait_until(lambda: len(stores.completed) == 100, 120, "100 jobs completed")
            jobs = [await queue.get(job_id) for job_id in ids]
            assert all(job is not None and job.status == JobStatus.COMPLETED for job in jobs)
            ran = Counter(job.worker for job in jobs if job is not None)
            assert set(ran) == {f"{NAME}-gpu0", f"{NAME}-gpu1"}, ran
            assert stores.completed == {job_id: 1 for job_id in ids}

            await _stop(supervisor)
            assert "SIGTERM: stopping 2 GPU workers" in _log(supervisor)
        finally:
            supervisor.kill()
        await stores.stop()
        await queue.close()

    asyncio.run(run())


@pytest.mark.slow
def test_kill_9_of_one_worker_under_load_the_other_serves_and_it_is_back_within_3_s(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = QueueSettings(ack_wait_seconds=2.0, retry_delay_seconds=0.2)

    async def run() -> None:
        queue = await JobQueue.connect(nats.url, settings)
        stores = await StoredResults().start(nats.url)
        supervisor = _supervisor(tmp_path, nats.url)
        try:
            children = await _both_ready(supervisor)
            victim, _ = children[f"{NAME}-gpu1"]
            survivor, _ = children[f"{NAME}-gpu0"]
            ids = await submit_many(queue, [chat_body(i, max_tokens=4) for i in range(400)])
            await wait_until(lambda: len(stores.completed) >= 40, 120, "40 jobs completed")
            engine = _descendants(victim)
            os.kill(victim, signal.SIGKILL)
            killed_at, done_at_kill = time.monotonic(), len(stores.completed)
            assert done_at_kill < len(ids), "the jobs were done before the kill"

            def restarted() -> bool:
                return any(gpu == 1 and pid != victim for gpu, _, pid, _ in _started(supervisor))

            await wait_until(restarted, 3.0, "GPU 1's worker started again")
            back_in = time.monotonic() - killed_at
            # Nothing the new process did is stored yet: these are the survivor's.
            assert len(stores.completed) > done_at_kill, "GPU 0's worker stopped serving"
            assert _alive(survivor)
            # The killed worker's engine process goes too (on a GPU: its memory is freed).
            await wait_until(lambda: not any(map(_alive, engine)), 10, "its engine exited")
            await wait_until(lambda: _ready_children(supervisor)[f"{NAME}-gpu1"][0] != victim,
                             60, "GPU 1's new worker ready")  # fmt: skip
            ready_in = time.monotonic() - killed_at
            new_pid, visible = _ready_children(supervisor)[f"{NAME}-gpu1"]
            assert visible == "1" and _environment_variable(new_pid, "CUDA_VISIBLE_DEVICES") == "1"
            later = await submit_many(queue, [chat_body(i) for i in range(400, 500)])
            ids += later
            await wait_until(lambda: len(stores.completed) == len(ids), 180, "every job completed")

            assert stores.completed == {job_id: 1 for job_id in ids}  # none lost, none twice
            jobs = [await queue.get(job_id) for job_id in ids]
            assert all(job is not None and job.status == JobStatus.COMPLETED for job in jobs)
            redelivered = [job for job in jobs if job is not None and job.attempts > 1]
            assert redelivered, "the killed worker had no job in flight"
            assert f"{NAME}-gpu1" in {job.worker for job in jobs[-len(later) :] if job is not None}
            assert (await queue.depth()).total == 0
            print(f"GPU 1's worker: process back {back_in:.2f} s, pulling jobs {ready_in:.2f} s "
                  "after kill -9")  # fmt: skip
            await _stop(supervisor)
        finally:
            supervisor.kill()
        await stores.stop()
        await queue.close()

    asyncio.run(run())


@pytest.mark.slow
def test_with_an_idle_timeout_workers_that_exit_0_are_not_restarted_and_the_supervisor_exits(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    async def run() -> None:
        queue = await JobQueue.connect(nats.url)
        ids = await submit_many(queue, [chat_body(i) for i in range(10)])
        supervisor = _supervisor(tmp_path, nats.url, "--idle-timeout", "2")
        try:
            assert await supervisor.wait(120) == 0, supervisor.output()
        finally:
            supervisor.kill()
        log = _log(supervisor)
        assert log.count("exited after its idle timeout; not restarted") == 2, log
        assert "starting a new worker" not in log
        assert len(_started(supervisor)) == 2
        for job_id in ids:
            job = await queue.get(job_id)
            assert job is not None and job.status == JobStatus.COMPLETED
        await queue.close()

    asyncio.run(run())


def test_gpus_all_without_cuda_is_an_error_that_says_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ember.gpu import cuda_available

    available, _ = cuda_available()
    if available:
        pytest.skip("CUDA is usable here: --gpus all lists its GPUs")
    argv = ["worker", "--gpus", "all", "--nats", "nats://127.0.0.1:1", "--model", str(TINY_MODEL)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--gpus all lists the GPUs through the CUDA driver" in error
    assert "--device cpu" in error
