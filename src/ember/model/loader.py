"""Open a GGUF and build everything a model needs: config, tokenizer, chat template, backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import EmberError, ModelFormatError
from ember.model.backend import ForwardBackend
from ember.model.chat_template import ChatTemplate
from ember.model.config import ModelConfig
from ember.model.default_model import resolve_model_path
from ember.model.gguf_file import GGUFFile
from ember.model.llama_weights import LlamaWeights
from ember.model.numpy_llama import NumpyLlama
from ember.model.synthetic import is_synthetic, load_synthetic_backend, preset, synthetic_tokenizer
from ember.model.tokenizer import Tokenizer

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    backend: ForwardBackend
    load_seconds: float


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when a usable GPU is present, else the CPU."""
    if device not in DEVICES:
        raise EmberError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    available, reason = _cuda_status()
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise EmberError(f"--device cuda: {reason}")
    return "cuda"


def load_model(
    model: str | Path | None = None, device: str = "cpu", show_progress: bool = True
) -> LoadedModel:
    started = time.perf_counter()
    if is_synthetic(model):
        return _load_synthetic(str(model), device, started)
    path = resolve_model_path(model)
    device = resolve_device(device)
    gguf = GGUFFile.open(path)
    config = ModelConfig.from_gguf(gguf)
    backend: ForwardBackend
    with _progress(f"loading {path.name}", config.n_layers, show_progress) as advance:
        if device == "cuda":
            # The driver's start-up (context, kernels) and the weight upload run on a thread
            # while this one builds the tokenizer: the cold start pays for the longer of the
            # two, not their sum. The driver calls release the GIL.
            from ember.model.cuda.llama import CudaLlama

            with ThreadPoolExecutor(1, thread_name_prefix="ember-load") as pool:
                loading = pool.submit(CudaLlama.load, gguf, config, progress=advance)
                try:
                    tokenizer, chat_template = _text_side(path, gguf, config)
                except BaseException:
                    with suppress(Exception):
                        loading.result().close()
                    raise
                backend = loading.result()
            backend.context.make_current()  # current on the loading thread only, until now
        else:
            tokenizer, chat_template = _text_side(path, gguf, config)
            backend = NumpyLlama(config, LlamaWeights.load(gguf, config, progress=advance))
    return LoadedModel(
        path=path,
        config=config,
        tokenizer=tokenizer,
        chat_template=chat_template,
        backend=backend,
        load_seconds=time.perf_counter() - started,
    )


def _text_side(
    path: Path, gguf: GGUFFile, config: ModelConfig
) -> tuple[Tokenizer, ChatTemplate | None]:
    tokenizer = Tokenizer.from_gguf(gguf)
    if tokenizer.vocab_size < config.vocab_size:
        raise ModelFormatError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocabulary is {config.vocab_size}"
        )
    if gguf.get("tokenizer.chat_template") is None:
        return tokenizer, None
    # Compiled at the first chat: a run that never chats skips importing jinja2 (cold start).
    return tokenizer, ChatTemplate.from_gguf(gguf, compile_now=False)


def _load_synthetic(model: str, device: str, started: float) -> LoadedModel:
    config, _ = preset(model)
    if resolve_device(device) != "cuda":
        raise EmberError(f"{model} is generated on the GPU; it needs --device cuda (or auto)")
    backend = load_synthetic_backend(model)
    return LoadedModel(
        path=Path(model),
        config=config,
        tokenizer=synthetic_tokenizer(config.vocab_size),
        chat_template=None,
        backend=backend,
        load_seconds=time.perf_counter() - started,
    )


_PROGRESS_DELAY = 1.0  # seconds of loading before a progress bar appears


@contextmanager
def _progress(
    label: str, total: int, enabled: bool, delay: float = _PROGRESS_DELAY
) -> Iterator[Callable[[int], None]]:
    """`advance(done)` for the loading code. The bar appears only once loading has taken
    `delay` seconds, and tqdm is imported only then: a fast load never pays for its import
    (~20 ms, more on slower hosts), which counts in the cold start."""
    started = time.perf_counter()
    bar: Any = None

    def advance(done: int) -> None:
        nonlocal bar
        if bar is None:
            if not enabled or time.perf_counter() - started < delay:
                return
            from tqdm import tqdm

            bar = tqdm(total=total, initial=done, desc=label, unit="layer", leave=False)
        bar.update(done - bar.n)

    try:
        yield advance
    finally:
        if bar is not None:
            bar.close()


def _cuda_status() -> tuple[bool, str]:
    from ember.gpu.driver import cuda_available

    return cuda_available()
