"""The import rule of docs/architecture.md, enforced, with the layers read from the folders: stages
(negprompt_cli/stages/) never import each other or a composer, the core (negprompt_cli/*.py and its
subpackages other than stages/ and composers/, e.g. benchmark/) never imports a stage or a composer, composers
(negprompt_cli/composers/) may import anything, and plugins use the core only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "negprompt_cli"


def key(path: Path) -> str:
    """A module's dotted name inside negprompt_cli: 'stages.fit_neg', 'composers.cli', 'benchmark.protocol',
    'errors'; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    head = name.split(".")[0]
    return head if head in ("stages", "composers") else "core"


def imported(path: Path) -> set[str]:
    """The negprompt_cli modules ``path`` imports anywhere (top level or inside functions), as dotted names."""
    inside = path.is_relative_to(PACKAGE)  # a plugin's relative imports are not negprompt_cli's
    package = (key(path).split(".")[:-1] if path.name != "__init__.py" else key(path).split(".")) if inside else []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 or not inside:
                parts = (node.module or "").split(".")
                if parts[0] == "negprompt_cli" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
                continue
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "negprompt_cli" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
    return {name for name in found if name}


def modules() -> dict[str, set[str]]:
    return {key(p): imported(p) for p in PACKAGE.rglob("*.py") if key(p)}


def test_the_folders_show_the_layers_and_imports_respect_them():
    found = modules()
    stages = {m for m in found if layer(m) == "stages" and m != "stages"}
    composers = {m for m in found if layer(m) == "composers" and m != "composers"}
    assert stages == {"stages.fit_pos", "stages.fit_neg", "stages.transfer", "stages.score", "stages.report",
                      "stages.hub", "stages.cache", "stages.benchmark"}
    assert composers == {"composers.cli", "composers.app", "composers.cli_options", "composers.commands_train",
                         "composers.commands_score", "composers.commands_data", "composers.commands_hub",
                         "composers.commands_info", "composers.pipeline", "composers.demo", "composers.benchmark_run"}
    violations = []
    for name, imports in found.items():
        if layer(name) == "composers" or name == "__main__":  # __main__ starts the CLI
            continue
        for other in sorted(imports):
            if layer(other) == "composers" or (layer(other) == "stages" and other not in (name, "stages")):
                violations.append(f"{name} imports {other}")
    assert not violations, violations
    assert "stages.score" in found["composers.commands_score"] and "benchmark.protocol" in found["stages.benchmark"]


def test_plugins_only_use_the_core():
    for path in (PACKAGE.parent / "plugins").glob("*.py"):
        imports = imported(path)
        assert not {m for m in imports if layer(m) != "core"}, (path.name, imports)
