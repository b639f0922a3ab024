"""The package's import graph: no cycles (imports inside functions included) and the one-way rules of the layout."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llm_distill"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> modules of the package it imports anywhere in its body (top level, functions, classes)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_losses_import_nothing_else_of_the_package_and_nothing_imports_the_cli():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("llm_distill.losses"):
            outside = sorted(m for m in imported if not m.startswith("llm_distill.losses"))
            assert not outside, f"{name} imports {outside}: losses are pure tensor functions"
        assert "llm_distill.cli" not in imported or name == "llm_distill.__main__", f"{name} imports the CLI"


def test_the_version_module_imports_nothing_of_the_package():
    assert import_graph()["llm_distill._version"] == set()


def test_version_floors_match_pyproject_and_are_enforced(monkeypatch):
    import re

    from llm_distill import _requirements

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    for name, floor in _requirements.MINIMUM.items():
        assert re.search(rf'"{name}>={re.escape(floor)}"', pyproject), name
    assert _requirements._release("5.19.0.dev0") == (5, 19, 0) and _requirements._release("2.13.0+cpu") == (2, 13, 0)
    monkeypatch.setattr(_requirements, "version", lambda name: "5.3.0" if name == "transformers" else "99.0")
    assert _requirements.too_old() == ["transformers 5.3.0 (needs >= 5.19)"]
    try:
        _requirements.check_versions()
    except ImportError as err:
        assert "transformers>=5.19" in str(err)
    else:
        raise AssertionError("an old transformers must be refused at import")

    class TrainerWithoutTheAttribute:
        pass

    try:
        _requirements.check_trainer(TrainerWithoutTheAttribute)
    except ImportError as err:
        assert "loss_is_scaled_for_ga" in str(err)
    else:
        raise AssertionError("a Trainer that would scale losses twice must be refused")


def test_importing_the_package_loads_neither_torch_nor_transformers_until_a_public_name_is_used():
    import subprocess
    import sys

    code = (
        "import sys, llm_distill; heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy; "
        "from llm_distill import DistillationTrainer; assert 'transformers' in sys.modules; "
        "assert llm_distill.DistillationTrainer is DistillationTrainer"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
