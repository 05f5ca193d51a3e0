"""The dependency rules of ARCHITECTURE.md, checked on the source's imports (ast, no import).

Layers, top to bottom: the CLI (``mmctx.cli``) -> ``mmctx.pipelines`` -> ``mmctx.encoders`` ->
the core (everything else in ``mmctx``). A module may import its own layer and those below,
never one above. Lightning is imported only by the CLI, pipelines and the data modules.
Module-level imports form no cycle. A failure names the importing file, line and import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "mmctx": ROOT / "mmctx",
    "mmctx.encoders": ROOT / "encoders",
    "mmctx.pipelines": ROOT / "pipelines",
}
LAYERS = ["mmctx.cli", "mmctx.pipelines", "mmctx.encoders", "mmctx"]  # top first
LIGHTNING_OK = (
    "mmctx.cli",
    "mmctx.pipelines",
    "mmctx.data.datamodule",
    "mmctx.data.stream_datamodule",
    "mmctx.datasets.modules",
)


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import (relative ones resolved)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module if _is_package(module) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return out


def _layer(module: str) -> int:
    return next(i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + "."))


def test_every_import_points_down_the_layers():
    wrong = []
    for module in MODULES:
        for line, target in _imports(module):
            if target.split(".")[0] != "mmctx":
                continue
            if _layer(target) < _layer(module):
                where = MODULES[module].relative_to(ROOT)
                wrong.append(
                    f"{where}:{line}: {module} ({LAYERS[_layer(module)]}) imports {target} "
                    f"({LAYERS[_layer(target)]}), a layer above it"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_lightning_only_where_training_or_the_cli_lives():
    wrong = [
        f"{MODULES[module].relative_to(ROOT)}:{line}: imports {target}"
        for module in MODULES
        if not module.startswith(LIGHTNING_OK)
        for line, target in _imports(module)
        if target.split(".")[0] in ("lightning", "pytorch_lightning")
    ]
    assert not wrong, (
        "Lightning imported outside pipelines, the CLI and data modules:\n" + "\n".join(wrong)
    )


def test_module_level_imports_have_no_cycle():
    graph = {
        m: sorted({t for _, t in _imports(m, top_level_only=True) if t in MODULES and t != m})
        for m in MODULES
    }
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_checks_see_a_violation(tmp_path, monkeypatch):
    """The rules catch what they are for: a core module importing a pipeline."""
    bad = tmp_path / "bad.py"
    bad.write_text("import lightning\nfrom mmctx.pipelines import MultimodalClassifier\n")
    monkeypatch.setitem(MODULES, "mmctx.bad_module", bad)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    import pytest

    with pytest.raises(AssertionError, match="mmctx.bad_module .* imports mmctx.pipelines"):
        test_every_import_points_down_the_layers()
    with pytest.raises(AssertionError, match="bad.py:1: imports lightning"):
        test_lightning_only_where_training_or_the_cli_lives()
