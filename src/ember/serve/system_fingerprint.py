"""OpenAI's `system_fingerprint`: which model file and which Ember made an answer.

It changes when either does (an answer for the same seed may then differ), and stays the same
across restarts of the same pair. The file is named by its size and its first and last MiB (its
header and metadata, and the last weights), not read whole: a model of gigabytes would
otherwise cost seconds at every start.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# The root package: its version, beside `ember.errors`, which it imports (the rest is lazy).
import ember

_SAMPLE_BYTES = 1 << 20


def system_fingerprint(model_path: Path, version: str = ember.__version__) -> str:
    digest = hashlib.sha256(f"ember {version}\n".encode())
    if model_path.is_file():
        with model_path.open("rb") as file:
            size = file.seek(0, 2)
            digest.update(f"{size}\n".encode())
            file.seek(0)
            digest.update(file.read(_SAMPLE_BYTES))
            file.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(file.read(_SAMPLE_BYTES))
    else:  # a synthetic model: its preset's name says what it is
        digest.update(str(model_path).encode())
    return f"fp_{digest.hexdigest()[:12]}"
