"""Ember's error hierarchy: each error carries what a user needs to fix the problem."""

from __future__ import annotations


class EmberError(Exception):
    """Base of every error Ember raises on purpose."""


class ModelFormatError(EmberError):
    """The model file is not something Ember can load (format, truncation, unsupported content)."""


class ModelNotFoundError(EmberError):
    """No model file at the given path, or the default model is not installed."""


class CudaError(EmberError):
    """A CUDA driver call failed; carries the driver's error name and text.

    `call` is the driver function (e.g. ``cuMemAlloc``), `code` the numeric ``CUresult`` and
    `name`/`text` what ``cuGetErrorName``/``cuGetErrorString`` say about it. All are None when
    the error did not come from a driver call (e.g. no driver installed).
    """

    def __init__(
        self,
        message: str,
        *,
        call: str | None = None,
        code: int | None = None,
        name: str | None = None,
        text: str | None = None,
    ) -> None:
        self.call = call
        self.code = code
        self.name = name
        self.text = text
        super().__init__(message)


class CudaUnavailableError(CudaError):
    """No usable CUDA here: cuda-bindings missing, no driver, driver too old, or no GPU."""


class InvalidRequestError(EmberError, ValueError):
    """A request the engine cannot accept as given (bad sampling parameters, bad prompt).

    `param` names the request field to change (`"prompt"`, `"max_tokens"`…) where one is to
    blame, so that an API in front can say which (OpenAI's `param`).
    """

    param: str | None = None


class SamplingParamsError(InvalidRequestError):
    """A sampling parameter is out of range or inconsistent."""


class StructuredOutputError(InvalidRequestError):
    """A JSON schema, regex, choice list or grammar that the grammar engine cannot compile, or
    that can produce no output; `param` names the request field that holds it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class EmptyPromptError(InvalidRequestError):
    param = "prompt"

    def __init__(self) -> None:
        super().__init__("the prompt is empty")


class PromptTokenIdError(InvalidRequestError):
    """A prompt given as token ids holds ids outside the model's vocabulary."""

    param = "prompt"

    def __init__(self, bad_ids: list[int], vocab_size: int) -> None:
        self.bad_ids = bad_ids
        super().__init__(f"prompt token ids must be in [0, {vocab_size}); got {bad_ids[:5]}")


class PromptTooLongError(InvalidRequestError):
    """Prompt plus requested tokens do not fit in the model's context window.

    `max_tokens` None: the prompt alone fills the context (nothing was requested explicitly).
    """

    def __init__(self, prompt_tokens: int, max_tokens: int | None, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        if max_tokens is None:
            self.param = "prompt"
            message = (
                f"the prompt has {prompt_tokens} tokens but the model's context length is "
                f"{context_length} tokens, which leaves no room to generate; shorten the prompt"
            )
        else:
            self.param = "max_tokens"
            message = (
                f"the prompt has {prompt_tokens} tokens and {max_tokens} more were requested "
                f"(max_tokens): {prompt_tokens + max_tokens} tokens, but the model's context "
                f"length is {context_length} tokens; lower max_tokens or shorten the prompt"
            )
        super().__init__(message)


class KVCacheTooSmallError(InvalidRequestError):
    """Prompt plus requested tokens need more KV blocks than the whole cache has."""

    def __init__(
        self, prompt_tokens: int, max_tokens: int | None, blocks_needed: int, num_blocks: int
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.blocks_needed = blocks_needed
        self.num_blocks = num_blocks
        self.param = "prompt" if max_tokens is None else "max_tokens"
        asked = "" if max_tokens is None else f" plus max_tokens ({max_tokens})"
        fix = "shorten the prompt" if max_tokens is None else "lower max_tokens"
        super().__init__(
            f"the prompt ({prompt_tokens} tokens){asked} needs {blocks_needed} KV blocks but the "
            f"cache holds {num_blocks}; {fix}, or give the engine more KV cache memory"
        )


class AdmissionError(EmberError):
    """The engine cannot take the request now (queue full, no capacity)."""
