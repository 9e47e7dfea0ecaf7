"""The grouping of common/ (docs/ARCHITECTURE.md, section 1) holds: leaves import only leaves, recipe/ does not
reach up into run/ or report/, run/ and report/ do not import each other, and no common module imports a framework.
Read from the source with ast, imports inside functions included, so a lazy import cannot hide a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[2] / "common"
PACKAGES = ("recipe", "run", "report", "stages")
FRAMEWORKS = ("torch", "torchvision", "torchao", "torch_pruning", "paddle", "paddleslim")


def _module_name(path: Path) -> str:
    parts = path.relative_to(COMMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from common import x`
    return found


def _group(module: str) -> str:
    """'leaf' for common/*.py, the subpackage name otherwise, '' for what is not part of common."""
    parts = module.split(".")
    if parts[0] != "common" or len(parts) < 2:
        return ""
    if parts[1] in PACKAGES:
        return parts[1]
    return "cli" if parts[1] == "cli" else "leaf"


MODULES = {_module_name(p): p for p in sorted(COMMON.rglob("*.py"))}
# group -> groups it must not import
FORBIDDEN = {"leaf": {"recipe", "run", "report", "stages", "cli"}, "recipe": {"run", "cli"},
             "run": {"report", "cli"}, "report": {"run", "cli"}, "stages": {"run", "cli"}}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_respects_the_layers(module: str):
    imported = {m for m in _imports(MODULES[module]) if m in MODULES or _group(m) in PACKAGES}
    bad = sorted(m for m in imported if _group(m) in FORBIDDEN.get(_group(module), set()))
    assert not bad, f"{module} ({_group(module)}) imports {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_common_module_imports_a_framework(module: str):
    bad = sorted(m for m in _imports(MODULES[module]) if m.split(".")[0] in FRAMEWORKS)
    assert not bad, f"{module} imports {bad}: frameworks run in worker subprocesses only"


def test_package_inits_import_nothing():
    for package in ("recipe", "run", "report"):
        assert not _imports(COMMON / package / "__init__.py"), f"common/{package}/__init__.py imports something"
