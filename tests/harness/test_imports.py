"""The core's module-level imports form no cycle, and every family is found through entry points."""

import ast
from importlib.metadata import entry_points
from pathlib import Path

from harness import registry
from harness.registry import ENTRY_POINT_GROUP, list_models

ROOT = Path(registry.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Harness modules imported by ``path``'s top-level statements (function bodies import lazily)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}
    out = set()
    for name in found:  # importing a.b.c runs a, a.b and a.b.c
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules
    return out


def test_no_import_cycle_among_harness_modules():
    graph = {_module_name(p): _imports(p) - {_module_name(p)} for p in ROOT.rglob("*.py")}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join(path + [module, other])}"
            if other not in state:
                visit(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_built_in_families_are_found_through_the_entry_point_group():
    declared = {ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    modules = {f"models.{p.stem}" for p in (ROOT.parent / "models").glob("*.py")} | {
        f"models.{p.parent.name}" for p in (ROOT.parent / "models").glob("*/__init__.py")}  # a family as a package
    assert {"models.sasrec", "models.popularity", "models.hier_moe_rec", "models.clip_multimodal"} <= declared
    assert declared <= modules
    assert {"sasrec", "popularity", "hier_moe_rec", "clip_multimodal"} <= set(list_models())
