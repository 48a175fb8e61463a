"""Ember's error hierarchy: each error carries what a user needs to fix the problem."""

from __future__ import annotations


class EmberError(Exception):
    """Base of every error Ember raises on purpose."""


class ModelFormatError(EmberError):
    """The model file is not something Ember can load (format, truncation, unsupported content)."""


class ModelNotFoundError(EmberError):
    """No model file at the given path, or the default model is not installed."""


class CudaError(EmberError):
    """A CUDA driver call failed; carries the driver's error name and text."""


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
