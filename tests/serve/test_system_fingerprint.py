"""`system_fingerprint`: the same for the same model file and Ember, else different."""

from __future__ import annotations

import re
from pathlib import Path

from ember.serve.system_fingerprint import system_fingerprint


def test_it_names_the_file_and_the_version(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 20_000)  # 5 MB: head, middle and tail
    first = system_fingerprint(model)
    assert re.fullmatch(r"fp_[0-9a-f]{12}", first)
    assert system_fingerprint(model) == first
    assert system_fingerprint(model, version="9.9.9") != first
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(model.read_bytes())
    assert system_fingerprint(copy) == first  # the file's content, not its name or time
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # the last weights changed
    model.write_bytes(bytes(data))
    assert system_fingerprint(model) != first


def test_a_synthetic_model_is_named_by_its_preset() -> None:
    one = system_fingerprint(Path("synthetic:llama-1b-q4_0"))
    assert one == system_fingerprint(Path("synthetic:llama-1b-q4_0"))
    assert one != system_fingerprint(Path("synthetic:llama-8b-q4_0"))
