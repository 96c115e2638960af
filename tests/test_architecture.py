"""The import rules of docs/architecture.md, enforced, with every rule read from the folders.

Each core folder (``negprompt_cli/<folder>/__init__.py``) and each top-level module that is not shared
(``world``, ``detector``, ``__main__``) declares ``MAY_IMPORT``: the layers it may import besides itself.
"shared" is the other top-level modules (errors, console, presets, registry, ...), which import only each
other; "*" is anything (the composers). A folder with ``OWN_FOLDER = False`` (the stages) never imports its
own modules. Plugins (built-in, and docs/plugins.md's examples) import ``negprompt.plugin`` only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "negprompt_cli"
SHARED = "shared"
MAX_TOP_LEVEL_MODULES = 12


def key(path: Path) -> str:
    """A module's dotted name inside negprompt_cli: 'stages.fit_neg', 'features.backbone', 'errors'; a package's
    ``__init__`` is the package ('' for negprompt_cli itself)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The negprompt_cli modules ``path`` imports anywhere (top level or inside functions), as dotted names."""
    inside = path.is_relative_to(PACKAGE)  # a plugin's relative imports are not negprompt_cli's
    package = (key(path).split(".")[:-1] if path.name != "__init__.py" else key(path).split(".")) if inside else []
    package = [part for part in package if part]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 or not inside:
                parts = (node.module or "").split(".")
                if parts[0] == "negprompt_cli":
                    found.update(".".join([*parts[1:], alias.name]) if len(parts) == 1 else ".".join(parts[1:])
                                 for alias in node.names)
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
    return {name for name in found if name and name != "__version__" and name != "hookimpl"}


def declared(path: Path) -> dict[str, object]:
    """The module-level constants ``MAY_IMPORT`` / ``OWN_FOLDER`` a file declares (read, not imported)."""
    out: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("MAY_IMPORT", "OWN_FOLDER"):
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def folders() -> dict[str, dict[str, object]]:
    return {init.parent.name: declared(init) for init in sorted(PACKAGE.glob("*/__init__.py"))}


def top_level_modules() -> list[Path]:
    return sorted(PACKAGE.glob("*.py"))


def layers() -> dict[str, dict[str, object]]:
    """Every layer's rule: one per folder, one per top-level module that declares its own, and the shared one."""
    rules = folders()
    for path in top_level_modules():
        rule = declared(path)
        if "MAY_IMPORT" in rule:
            rules[path.stem] = rule
    rules[SHARED] = {"MAY_IMPORT": (SHARED,)}
    return rules


def layer_of(name: str, rules: dict[str, dict[str, object]]) -> str:
    head = name.split(".")[0]
    return head if head in rules and head != SHARED else SHARED


def modules() -> dict[str, set[str]]:
    return {key(p): imported(p) for p in PACKAGE.rglob("*.py")}


def test_the_core_is_in_folders_with_few_modules_beside_them():
    top = [p.name for p in top_level_modules()]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for name in ("inputs", "features", "training", "scoring", "outputs", "report", "stages", "composers"):
        assert name in folders(), name


def test_every_folder_says_its_job_and_what_it_may_import():
    rules = layers()
    for name, rule in folders().items():
        init = PACKAGE / name / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(docstring) > 80 and "import" in docstring, f"{name}/__init__.py: say its job and its imports"
        assert "MAY_IMPORT" in rule, f"{name}/__init__.py declares no MAY_IMPORT"
        unknown = [other for other in rule["MAY_IMPORT"] if other != "*" and other not in rules]  # type: ignore[union-attr]
        assert not unknown, (name, unknown)
    # where images come from and what is written never depend on models, training or scores
    for low in ("inputs", "outputs"):
        assert not {"features", "training", "scoring"} & set(rules[low]["MAY_IMPORT"])  # type: ignore[arg-type]


def violations() -> list[str]:
    rules = layers()
    found = []
    for name, imports in modules().items():
        own = layer_of(name, rules) if name else "__init__"  # the package itself declares its own
        may = rules[own]["MAY_IMPORT"]
        for other in sorted(imports):
            theirs = layer_of(other, rules)
            if theirs == own:
                folder_package = other == own
                if own != SHARED and rules[own].get("OWN_FOLDER", True) is False and not folder_package \
                        and other != name:
                    found.append(f"{name} imports {other} (modules in {own}/ never import each other)")
                continue
            if "*" not in may and theirs not in may:  # type: ignore[operator]
                found.append(f"{name} ({own}) imports {other} ({theirs}); {own} may import {', '.join(may)}")  # type: ignore[arg-type]
    return found


def test_imports_respect_the_rules_the_folders_declare():
    assert not violations(), violations()
    found = modules()
    # the rules are read from real imports (a parser that saw nothing would pass everything)
    assert "stages.score" in found["composers.commands_score"] and "benchmark.protocol" in found["stages.benchmark"]
    assert "features.image_features" in found["training.data"] and "errors" in found["inputs.image_list"]


def test_a_violation_is_found(tmp_path, monkeypatch):
    """The checker itself: an input reader that imports a scorer, a stage that imports a stage."""
    fake = tmp_path / "negprompt_cli"
    for path in PACKAGE.rglob("*.py"):
        target = fake / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (fake / "inputs" / "bad_reader.py").write_text("from ..scoring.scores import score_features\n")
    (fake / "stages" / "bad_stage.py").write_text("from .score import score\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    found = violations()
    assert any(v.startswith("inputs.bad_reader (inputs) imports scoring.scores") for v in found), found
    assert any(v.startswith("stages.bad_stage imports stages.score") for v in found), found
    assert len(found) == 2, found


def test_docs_describe_one_row_per_folder_with_its_rule():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for name, rule in folders().items():
        row = re.search(rf"^\| `negprompt_cli/{name}/` \|(.*)$", text, flags=re.M)
        assert row, f"docs/architecture.md has no row for negprompt_cli/{name}/"
        allowed = ", ".join(rule["MAY_IMPORT"])  # type: ignore[arg-type]
        assert f"may import: {allowed}" in row.group(1), (name, allowed)


def negprompt_imports(source: str) -> set[str]:
    """The negprompt / negprompt_cli / negprompt_plugins modules a piece of plugin source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found.update(name for name in names if name.split(".")[0] in ("negprompt", "negprompt_cli",
                                                                      "negprompt_plugins"))
    return found


def test_plugins_import_only_the_documented_surface():
    """The built-in plugins and every example in docs/plugins.md (and docs/examples/) use ``negprompt.plugin`` and
    nothing else."""
    sources = {path.name: path.read_text() for path in (ROOT / "plugins").glob("*.py")}
    doc = (ROOT / "docs" / "plugins.md").read_text()
    examples = re.findall(r"```python\n(# (\w+)\.py\n.*?)```", doc, re.S)
    assert len(examples) >= 2, "docs/plugins.md lost its plugin examples"
    sources.update({f"docs/plugins.md:{name}": code for code, name in examples})
    sources.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "docs" / "examples").rglob("*.py")})
    for name, source in sources.items():
        assert negprompt_imports(source) <= {"negprompt.plugin"}, (name, negprompt_imports(source))
    assert all(negprompt_imports(source) for name, source in sources.items() if name != "__init__.py")


def test_the_plugin_surface_is_complete():
    import negprompt.plugin as surface

    for name in surface.__all__:
        assert getattr(surface, name) is not None, name
    documented = (ROOT / "docs" / "plugins.md").read_text()
    missing = [name for name in surface.__all__ if name != "__version__" and f"`{name}" not in documented]
    assert not missing, f"docs/plugins.md does not list {missing}"


MAX_COMMAND_LINES = 80


def test_stages_and_composers_read_in_one_screen():
    """A stage runs named steps and a command is its signature plus a few calls: no function in stages/ or
    composers/ over 80 lines (decorators included)."""
    long = []
    for folder in ("stages", "composers"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    if node.end_lineno - first + 1 > MAX_COMMAND_LINES:  # type: ignore[operator]
                        long.append(f"{folder}/{path.name}:{node.name} ({node.end_lineno - first + 1} lines)")  # type: ignore[operator]
    assert not long, long


def test_benchmark_scripts_do_not_import_each_other_in_a_cycle():
    scripts = {path.stem: path for path in (ROOT / "benchmarks").glob("*.py")}
    graph = {name: {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.module in scripts}
             for name, path in scripts.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cycles, cycles
    assert "common" in graph["gpu"] and "common" in graph["perf"]
