"""Ember: LLM inference from Python with no PyTorch and no CUDA toolkit."""

from __future__ import annotations

__version__ = "0.1.0"
