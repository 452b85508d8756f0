"""The package's layers: dependencies point one way, and no module imports itself back.

Every import counts, also those inside functions (the lazy imports that keep start-up fast) and
under ``TYPE_CHECKING``: a cycle hidden in a function still ties two layers together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from testkit.systems import REPO

PKG = "transactional_update"
# Lower layers never import higher ones, and subpackages of one layer do not import each other.
# Top-level modules are leaves that everyone may use and that use only each other.
LAYERS = {
    "config": 1,
    "snapshots": 2,
    "etc": 3,
    "record": 4,
    "core": 5,
    "packages": 6,
    "boot": 6,
    "reboot": 6,
    "live": 6,
    "provision": 7,
    "health": 7,
    "cli": 8,
}
LEAF = 0
ENTRY = 9  # __main__


def _modules() -> dict[str, Path]:
    base = REPO / PKG
    out = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(module, line)`` of every package module that *path* imports, wherever it does so."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith(PKG):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(path, name, modules):
            assert target in modules, f"{name}:{line} imports {target}, which does not exist"
            if target != name:
                edges.setdefault(target, line)
    return graph


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:
        return "(package)", LEAF
    if parts[1] == "__main__":
        return "__main__", ENTRY
    if parts[1] in LAYERS:
        return parts[1], LAYERS[parts[1]]
    return "(leaves)", LEAF


def test_every_subpackage_has_a_layer_and_an_empty_init() -> None:
    for path in sorted((REPO / PKG).iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in LAYERS, f"{path.name}/ has no layer in {__name__}.LAYERS"
            # Importing a subpackage runs its __init__: start-up pays for whatever it holds.
            assert (path / "__init__.py").read_text() == "", f"{path.name}/__init__.py"


def test_dependencies_point_down() -> None:
    wrong = []
    for src, edges in _graph().items():
        src_pkg, src_rank = _layer(src)
        for dst, line in edges.items():
            dst_pkg, dst_rank = _layer(dst)
            if src_pkg == dst_pkg or dst_rank == LEAF:
                continue  # leaves are everyone's; within a subpackage only cycles count
            if dst_rank >= src_rank:
                wrong.append(f"{src}:{line} imports {dst} ({src_pkg} must not use {dst_pkg})")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_hidden_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_function_local_and_type_checking_imports_count(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from transactional_update.core.context import Context\n"
        "def f() -> None:\n"
        "    from transactional_update.boot import grub\n"
    )
    modules = _modules()
    found = {t for t, _ in _imports(src, f"{PKG}.snapshots.m", modules)}
    assert found == {f"{PKG}.core.context", f"{PKG}.boot.grub"}


def test_the_readme_code_map_matches_the_folders() -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("## Code map", 1)[1].split("```", 2)[1]
    listed = [
        line.split()[0].rstrip("/")
        for line in block.splitlines()
        if line.startswith("  ") and line.split()[0].endswith("/")
    ]
    folders = sorted(p.name for p in (REPO / PKG).iterdir() if (p / "__init__.py").exists())
    assert sorted(listed) == folders
    # Listed from the top layer down, as the dependencies point.
    assert [LAYERS[name] for name in listed] == sorted((LAYERS[n] for n in listed), reverse=True)
    leaves = {p.name for p in (REPO / PKG).glob("*.py") if not p.name.startswith("__")}
    leaf_line = next(line for line in block.splitlines() if line.startswith("  errors.py"))
    assert leaves <= set(leaf_line.split()), "a top-level module is missing from the map"
