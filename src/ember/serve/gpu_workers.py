"""`ember worker --gpus`: one `ember worker` process per GPU, each seeing only its GPU, kept alive.

The supervisor runs no engine. For each GPU it starts `python -m ember worker ...` with the
user's own flags, `CUDA_VISIBLE_DEVICES` set to that one GPU, `--device cuda` (unless a device
was given) and its own worker name (`<name>-gpu<index>`, recorded in each job it runs). All of
them pull from the same JetStream consumer, so jobs spread over them by who has room.

- A child that dies (a crash, `kill -9`, a non-zero status) is started again after a back-off
  (`serve/restart_backoff.py`: 0.5 s, doubling while it keeps dying young). Its jobs are not
  lost: unacknowledged, the queue delivers them again after the ack wait.
- A child that exits 0 under `--idle-timeout` has scaled to zero: it is not restarted, and the
  supervisor exits 0 once every child has. Without `--idle-timeout`, any exit is restarted.
- A child's first run ending with status 2 (ember's status for a configuration error: the
  model, the NATS URL, a GPU that cannot be used) stops every child and the supervisor with
  status 2; starting it again would fail the same way.
- Each child's output (its engine process's too) comes out on the supervisor's stderr, every
  line after `[GPU <index> pid <pid>]`.
- SIGTERM or SIGINT is forwarded to every child, which stops fetching and drains (the worker's
  own shutdown); the supervisor exits once they have, killing any still running after
  `stop_timeout` seconds.

`--device cpu` with `--gpus` runs every child on the CPU, each still with its own
`CUDA_VISIBLE_DEVICES`: for testing the spreading on a machine without GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ember.errors import CudaError, EmberError
from ember.serve.log_format import configure_logging
from ember.serve.restart_backoff import RestartBackoff

logger = logging.getLogger("ember.worker")

# ember's exit status for an EmberError (a configuration error), as `ember.cli.main` returns it.
_CONFIGURATION_ERROR = 2
# The options the supervisor sets per child; the user's own are taken off its command line.
_CHILD_OPTIONS = ("--gpus", "--device", "--worker-name")
# A child's output line longer than this is relayed in parts (log records are cut far shorter).
_LINE_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class GpuWorkerPlan:
    gpus: tuple[int, ...]  # indices as this process's driver counts them
    argv: tuple[str, ...]  # the command line after `ember` (`worker ...`), as the user gave it
    name: str  # the workers' base name: each child's is `<name>-gpu<index>`
    device: str  # the children's --device: cuda, or cpu to test the spreading
    environment: Mapping[str, str]  # the children's, less CUDA_VISIBLE_DEVICES
    restart_clean_exits: bool  # False under --idle-timeout: exiting 0 is scaling to zero
    restart_backoff: float
    max_restart_backoff: float
    stop_timeout: float  # after forwarding SIGTERM, before the children left are killed
    log_level: str

    def __post_init__(self) -> None:
        if not self.gpus:
            raise EmberError("--gpus names no GPU")

    def child_name(self, gpu: int) -> str:
        return f"{self.name}-gpu{gpu}"

    def child_command(self, gpu: int) -> list[str]:
        argv = without_options(self.argv, _CHILD_OPTIONS)
        own = ["--device", self.device, "--worker-name", self.child_name(gpu)]
        return [sys.executable, "-m", "ember", *argv, *own]

    def child_environment(self, gpu: int) -> dict[str, str]:
        inherited = self.environment.get("CUDA_VISIBLE_DEVICES")
        return {**self.environment, "CUDA_VISIBLE_DEVICES": visible_device(gpu, inherited)}


def resolve_gpus(text: str, device: str, gpu_count: Callable[[], int]) -> tuple[int, ...]:
    """`--gpus`'s value as GPU indices: `all` asks the driver (`gpu_count`), a list is checked
    against it unless the children run on the CPU."""
    if text.strip() == "all":
        try:
            return tuple(range(gpu_count()))
        except CudaError as error:
            raise EmberError(
                f"--gpus all lists the GPUs through the CUDA driver, which is not usable here: "
                f"{error}. On a machine without GPUs, name them (--gpus 0,1) with --device cpu "
                "to test the spreading"
            ) from None
    try:
        gpus = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise EmberError(
            f"--gpus {text!r}: give `all` or GPU indices separated by commas, e.g. --gpus 0,1"
        ) from None
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise EmberError(f"--gpus {text!r}: GPU indices are distinct and >= 0")
    if device != "cpu":
        try:
            count = gpu_count()
        except CudaError as error:
            raise EmberError(
                f"--gpus {text}: the workers run on GPUs (--device {device}), but CUDA is not "
                f"usable here: {error}. --device cpu runs them on the CPU, to test the spreading"
            ) from None
        missing = [gpu for gpu in gpus if gpu >= count]
        if missing:
            raise EmberError(
                f"--gpus {text!r}: GPU {missing[0]} does not exist: the driver sees {count} "
                f"GPU(s), 0 to {count - 1} (within CUDA_VISIBLE_DEVICES when it is set)"
            )
    return gpus


def visible_device(gpu: int, inherited: str | None) -> str:
    """A child's CUDA_VISIBLE_DEVICES: GPU `gpu` of those this process sees (`inherited`, its
    own CUDA_VISIBLE_DEVICES, may narrow or reorder them, or name them by UUID)."""
    if inherited is None:
        return str(gpu)
    entries = [entry.strip() for entry in inherited.split(",") if entry.strip()]
    if gpu >= len(entries):
        raise EmberError(
            f"--gpus: GPU {gpu} is not among CUDA_VISIBLE_DEVICES={inherited!r}, "
            f"which shows {len(entries)}: indices count within it from 0"
        )
    return entries[gpu]


def option_given(argv: Sequence[str], option: str) -> bool:
    return len(without_options(argv, (option,))) != len(argv)


def without_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """`argv` less each of `options` and its value (`--opt V` or `--opt=V`). A token that is a
    prefix of one of them is it: argparse, which accepted the line, takes unique prefixes."""
    kept: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            kept.append(token)
            kept.extend(tokens)
            break
        name, equals, _ = token.partition("=")
        if len(name) > 2 and name.startswith("--") and any(o.startswith(name) for o in options):
            if not equals:
                next(tokens, None)
            continue
        kept.append(token)
    return kept


def run_gpu_workers(plan: GpuWorkerPlan) -> int:
    configure_logging(plan.log_level)
    return asyncio.run(GpuWorkerSupervisor(plan).run())


class GpuWorkerSupervisor:
    def __init__(self, plan: GpuWorkerPlan) -> None:
        self.plan = plan
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._killer: asyncio.Task[None] | None = None
        self._killed = False
        self._failure: str | None = None

    async def run(self) -> int:
        """Keep one worker per GPU until all have exited for good; 0 unless one was killed at
        the stop timeout. EmberError if a child's first run was a configuration error."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        logger.info("one worker per GPU: %s (device %s)",
                    ", ".join(map(str, self.plan.gpus)), self.plan.device)  # fmt: skip
        try:
            await asyncio.gather(*(self._keep(gpu) for gpu in self.plan.gpus))
        finally:
            if self._killer is not None:
                self._killer.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            raise EmberError(self._failure)
        logger.info("every GPU worker has exited")
        return 1 if self._killed else 0

    def stop(self, sig: signal.Signals = signal.SIGTERM, why: str | None = None) -> None:
        """Forward `sig` to every running child; they drain, and `run` returns when they have."""
        if not self._stopping.is_set():
            logger.info("%s: stopping %d GPU workers (they finish their running jobs)",
                        why or sig.name, len(self._running()))  # fmt: skip
            self._killer = asyncio.create_task(self._kill_after(self.plan.stop_timeout))
        self._stopping.set()
        for process in self._running():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def _running(self) -> list[asyncio.subprocess.Process]:
        return [p for p in self.processes.values() if p.returncode is None]

    async def _kill_after(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        for gpu, process in self.processes.items():
            if process.returncode is None:
                logger.error("GPU %d: worker pid %d still running %.0f s after the stop; "
                             "killing it", gpu, process.pid, timeout)  # fmt: skip
                self._killed = True
                with contextlib.suppress(ProcessLookupError):
                    process.kill()

    async def _keep(self, gpu: int) -> None:
        """Run GPU `gpu`'s worker, again after each death, until it is done or told to stop."""
        loop = asyncio.get_running_loop()
        backoff = RestartBackoff(self.plan.restart_backoff, self.plan.max_restart_backoff)
        first_run = True
        while not self._stopping.is_set():
            started = loop.time()
            status = await self._run_once(gpu)
            if self._stopping.is_set():
                return
            if status == 0 and not self.plan.restart_clean_exits:
                logger.info("GPU %d: worker exited after its idle timeout; not restarted", gpu)
                return
            if first_run and status == _CONFIGURATION_ERROR:
                self._failure = (
                    f"the worker for GPU {gpu} exited with status 2 on its first start (its "
                    "error is above); starting it again would fail the same way"
                )
                self.stop(why=f"GPU {gpu}'s worker could not start")
                return
            first_run = False
            delay = backoff.after_run(loop.time() - started)
            logger.info("GPU %d: starting a new worker in %.1f s", gpu, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, gpu: int) -> int | None:
        """Start GPU `gpu`'s worker and wait for it; its exit status (None: it did not start)."""
        environment = self.plan.child_environment(gpu)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.plan.child_command(gpu), env=environment, limit=_LINE_LIMIT,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)  # fmt: skip
        except OSError as error:
            logger.error("GPU %d: the worker could not be started: %s", gpu, error)
            return None
        self.processes[gpu] = process
        assert process.stdout is not None
        prefix = f"[GPU {gpu} pid {process.pid}] ".encode()
        relay = asyncio.create_task(relay_lines(process.stdout, prefix, sys.stderr.buffer))
        if self._stopping.is_set():  # the stop came while it was starting
            process.send_signal(signal.SIGTERM)
        logger.info("GPU %d: worker %s started, pid %d (CUDA_VISIBLE_DEVICES=%s)", gpu,
                    self.plan.child_name(gpu), process.pid,
                    environment["CUDA_VISIBLE_DEVICES"])  # fmt: skip
        status = await process.wait()
        # Its last lines first (its engine process, if still alive, may hold the pipe open).
        await asyncio.wait({relay}, timeout=1.0)
        expected = self._stopping.is_set() or (status == 0 and not self.plan.restart_clean_exits)
        logger.log(logging.INFO if expected else logging.ERROR,
                   "GPU %d: worker pid %d %s", gpu, process.pid, _ended(status))  # fmt: skip
        return status


async def relay_lines(lines: asyncio.StreamReader, prefix: bytes, out: BinaryIO) -> None:
    """Copy a child's output to `out`, each line after `prefix` (which GPU, which process)."""
    while True:
        try:
            line = await lines.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # the output's end
            if end.partial:
                out.write(prefix + end.partial + b"\n")
                out.flush()
            return
        except asyncio.LimitOverrunError as long:  # a line longer than the limit: in parts
            line = await lines.readexactly(long.consumed) + b"\n"
        out.write(prefix + line)
        out.flush()


def _ended(status: int | None) -> str:
    if status is None:
        return "could not be started"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with status {status}"
