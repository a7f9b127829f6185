"""The package's shape, read from the source: no import cycle (imports anywhere in a file count,
function-level ones included), no dynamic import, no file over 600 lines, and no ``isinstance``
on a model class outside ``kn_lens/models/``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kn_lens"
MODEL_CLASSES = {"HookedEncoder", "HookedTransformer", "TransformerBridge"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, ast.Module]:
    return {
        module_name(p): ast.parse(p.read_text(), filename=str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def imports_of(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The kn_lens modules ``name`` imports, anywhere in the file (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    out: set[str] = set()
    is_package = name in modules and any(m.startswith(name + ".") for m in modules)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        for t in targets:
            if t.split(".")[0] == "kn_lens" and t != name:
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    out.add(t)
    return out


def test_no_import_cycle() -> None:
    trees = sources()
    modules = set(trees)
    graph = {m: imports_of(m, t, modules) for m, t in trees.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_dynamic_import() -> None:
    for name, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                assert called not in ("import_module", "__import__"), name


def test_no_file_over_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, long


def test_isinstance_on_a_model_class_only_in_models() -> None:
    for name, tree in sources().items():
        if name.startswith("kn_lens.models"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                assert not names & MODEL_CLASSES, f"{name}: isinstance on {names & MODEL_CLASSES}"
