"""The import rule of docs/architecture.md, enforced: stages never import each other, the core never imports a
stage, and nothing but the composers (CLI, demo, one-command pipeline) sees more than one stage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "negprompt_cli"
STAGES = {"fit_pos", "fit_neg", "transfer", "score", "report", "hub"}
COMPOSERS = {"cli", "demo", "pipeline", "__main__"}


def local_imports(path: Path) -> set[str]:
    """negprompt_cli modules imported anywhere in ``path`` (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("negprompt_cli."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("negprompt_cli."))
    return found


def test_stages_and_core_respect_the_layers():
    modules = {p.stem: local_imports(p) for p in PACKAGE.glob("*.py")}
    assert STAGES | COMPOSERS <= set(modules)
    violations = []
    for name, imports in modules.items():
        if name in COMPOSERS:
            continue
        forbidden = (STAGES - {name}) | COMPOSERS
        violations += [f"{name} imports {other}" for other in sorted(imports & forbidden)]
    assert not violations, violations


def test_plugins_only_use_the_core():
    for path in (PACKAGE.parent / "plugins").glob("*.py"):
        imports = local_imports(path)
        assert not imports & (STAGES | COMPOSERS), (path.name, imports)
