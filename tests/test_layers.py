"""The package's shape: layers that import only downwards, no import cycles, no giant files.

Every ``import`` in ``optimum_wc`` (function-level ones included: they hide
cycles at run time, not in the design) is read with ``ast``; the layer order
is data below.  A unit (a top-level module or subpackage) may import units of
lower layers and itself, nothing else: not a higher layer, not a sibling of
its own layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optimum_wc"
ROOT_NAME = "optimum_wc"

# Lowest first.  Units of one layer are independent of each other.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "version"}),
    frozenset({"staging"}),
    frozenset({"layout"}),
    frozenset({"config"}),
    frozenset({"quant"}),
    frozenset({"ir"}),
    frozenset({"calibration", "checkpoints"}),
    frozenset({"report", "resources", "evaluation", "models"}),
    frozenset({"engine"}),
    frozenset({"export"}),
    frozenset({"hf", "tune"}),
    frozenset({"cli"}),
    frozenset({"__init__", "__main__"}),
)
MAX_FILE_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` imports mod
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target.split(".")[0] == ROOT_NAME and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer_index() -> dict[str, int]:
    return {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in modules()}
    missing = sorted(units - set(layer_index()))
    assert not missing, f"give these units a place in LAYERS: {missing}"


def test_imports_only_go_down():
    index = layer_index()
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            a, b = unit_of(module), unit_of(target)
            if a != b and index[b] >= index[a]:
                wrong.append(f"{module} -> {target} ({a}: layer {index[a]}, {b}: layer {index[b]})")
    assert not wrong, "imports that do not go to a lower layer:\n" + "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_guard_against(tmp_path):
    """The cycle finder finds a planted cycle; the resolver reads relative, absolute and submodule imports."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("from ..quant.lowering import quantize\nimport optimum_wc.ir.sites\n"
                   "def f():\n    from .. import evaluation\n    from ..engine import compress_model\n")
    known = {"optimum_wc.quant.lowering", "optimum_wc.ir.sites", "optimum_wc.evaluation", "optimum_wc.engine",
             "optimum_wc.export.m"}
    assert imports_of("optimum_wc.export.m", src, known) == {
        "optimum_wc.quant.lowering", "optimum_wc.ir.sites", "optimum_wc.evaluation", "optimum_wc.engine"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_giant_files(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.name} has {lines} lines; split it by idea (at most {MAX_FILE_LINES})"
