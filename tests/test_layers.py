"""The import rules of docs/architecture.md: each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "ember"

# Layer -> the layers it may import (every layer may import ember.errors).
ALLOWED: dict[str, frozenset[str]] = {
    "gpu": frozenset(),
    "kernels": frozenset({"gpu"}),
    "model": frozenset({"kernels", "gpu"}),
    "engine": frozenset({"model"}),
    "serve": frozenset({"engine", "model", "gpu", "queue"}),
    "bench": frozenset({"engine", "model"}),
    # Jobs over NATS JetStream: plain data and the store, under the HTTP side and the worker.
    "queue": frozenset(),
}
# Narrower rules inside a permitted edge: (importing layer, imported layer) -> the modules of
# the imported layer it may use.
NARROW: dict[tuple[str, str], frozenset[str]] = {
    ("serve", "gpu"): frozenset({"ember.gpu", "ember.gpu.warmup"}),
}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m.startswith("ember.")}


def violations(layer: str, root: Path = SRC) -> list[str]:
    found = []
    for path in sorted((root / layer).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            target = module.split(".")[1]
            if target in (layer, "errors"):
                continue
            narrow = NARROW.get((layer, target))
            if target not in ALLOWED[layer] or (narrow is not None and module not in narrow):
                found.append(f"{path.relative_to(root)} imports {module}")
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_layers_below_it(layer: str) -> None:
    assert violations(layer) == []


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)


def test_upward_and_unlisted_imports_are_caught(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "m.py").write_text(
        "from ember.serve.app import build_app\nimport ember.model.config\n"
    )
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "m.py").write_text(
        "from ember.gpu import warmup\nfrom ember.gpu.memory import DeviceBuffer\n"
    )
    assert violations("engine", tmp_path) == [
        "engine/m.py imports ember.serve.app",
        "engine/m.py imports ember.serve.app.build_app",
    ]
    assert violations("serve", tmp_path) == [
        "serve/m.py imports ember.gpu.memory",
        "serve/m.py imports ember.gpu.memory.DeviceBuffer",
    ]
