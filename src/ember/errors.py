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
    """A request the engine cannot accept as given (bad sampling parameters, bad prompt)."""


class SamplingParamsError(InvalidRequestError):
    """A sampling parameter is out of range or inconsistent."""


class PromptTooLongError(InvalidRequestError):
    """Prompt plus requested tokens do not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        super().__init__(
            f"prompt has {prompt_tokens} tokens and {max_tokens} more were requested, "
            f"but the model's context length is {context_length} tokens"
        )


class AdmissionError(EmberError):
    """The engine cannot take the request now (queue full, no capacity)."""
