"""The import rule of docs/architecture.md, enforced: stages (negprompt_cli/stages/) never import each other or a
composer, the core (negprompt_cli/*.py) never imports a stage or a composer, and plugins use the core only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "negprompt_cli"
COMPOSERS = {"cli", "demo", "pipeline", "benchmark_run", "__main__"}


def key(path: Path) -> str:
    """'fit_neg' -> 'stages.fit_neg' for stage modules, the bare name for the rest."""
    return f"stages.{path.stem}" if path.parent.name == "stages" else path.stem


def imported(path: Path) -> set[str]:
    """The negprompt_cli modules ``path`` imports anywhere (top level or inside functions), as keys."""
    in_stages = path.parent.name == "stages"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "negprompt_cli" and len(parts) > 1:
                    found.add(".".join(parts[1:3]) if parts[1] == "stages" else parts[1])
                continue
            base = "stages." if in_stages and node.level == 1 else ""
            if node.module:
                head = node.module.split(".")
                found.add(f"stages.{head[1]}" if head[0] == "stages" and len(head) > 1 else base + head[0])
            else:
                found.update(base + alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "negprompt_cli" and len(parts) > 1:
                    found.add(".".join(parts[1:3]) if parts[1] == "stages" else parts[1])
    return found - {"stages"}


def test_the_tree_shows_the_layers_and_imports_respect_them():
    modules = {key(p): imported(p) for p in [*PACKAGE.glob("*.py"), *(PACKAGE / "stages").glob("*.py")]
               if p.stem != "__init__"}
    stages = {m for m in modules if m.startswith("stages.")}
    assert {"stages.fit_pos", "stages.fit_neg", "stages.transfer", "stages.score", "stages.report",
            "stages.hub", "stages.cache", "stages.benchmark"} == stages
    assert COMPOSERS <= set(modules)
    violations = []
    for name, imports in modules.items():
        if name in COMPOSERS:
            continue
        forbidden = (stages - {name}) | COMPOSERS
        violations += [f"{name} imports {other}" for other in sorted(imports & forbidden)]
    assert not violations, violations
    assert "stages.score" in modules["cli"]  # the rule is checked on real edges


def test_plugins_only_use_the_core():
    for path in (PACKAGE.parent / "plugins").glob("*.py"):
        imports = imported(path)
        assert not {m for m in imports if m.startswith("stages.") or m in COMPOSERS}, (path.name, imports)
