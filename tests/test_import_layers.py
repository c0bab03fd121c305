"""scripts/ imports one way only (scripts/__init__.py): every folder may import the shared modules at
the top level, server/ may import client/, packaging/ and ray_serve/, ray_serve/ client/ and harness/, and
no other folder imports another. Read
from the import statements, those inside functions included, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from typing import cast

from scripts.paths import ROOT

SCRIPTS = ROOT / "scripts"
SHARED = "shared"
ALLOWED = {
    "server": {"client", "packaging", "ray_serve"},
    "ray_serve": {"client", "harness"},
    "client": set(),
    "packaging": set(),
    "harness": set(),
    SHARED: set(),
}


def layer(module: str) -> str | None:
    """The folder a `scripts.` module is in, SHARED for the top-level modules; None outside scripts."""
    parts = module.split(".")
    if parts[0] != "scripts" or len(parts) < 2:
        return None
    return parts[1] if (SCRIPTS / parts[1]).is_dir() else SHARED


def imported(tree: ast.AST) -> set[str]:
    """Every module or module attribute an import statement anywhere in `tree` names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def folder_graph() -> dict[tuple[str, str], set[str]]:
    """(importing layer, imported layer) -> the files that import across it."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in sorted(SCRIPTS.rglob("*.py")):
        # cast: layer() is None only outside scripts/, and every path here is inside it.
        source = cast(str, layer(".".join(path.relative_to(ROOT).with_suffix("").parts)))
        for target in filter(None, map(layer, imported(ast.parse(path.read_text())))):
            if target != source:
                edges.setdefault((source, target), set()).add(str(path.relative_to(ROOT)))
    return edges


def test_folders_import_only_the_shared_modules_and_the_folders_allowed() -> None:
    edges = folder_graph()
    assert set(ALLOWED) >= {source for source, _ in edges}, "a new folder: give it its place in ALLOWED"
    forbidden = {edge: files for edge, files in edges.items() if edge[1] != SHARED and edge[1] not in ALLOWED[edge[0]]}
    assert not forbidden, f"imports against the layering (scripts/__init__.py): {forbidden}"
