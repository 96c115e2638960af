"""Every `negprompt ...` command line in README.md and docs/ names a command and options that exist, so the
documentation cannot drift from the CLI unnoticed (the commands themselves run in other tests)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from negprompt_cli.composers.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def invocations(text: str) -> list[str]:
    """What follows `negprompt` (or `python -m negprompt_cli`, `torchrun ... -m negprompt_cli`) in shell code
    blocks (continuations joined, comments dropped) and in inline code spans."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
                match = re.search(r"(?:^|\s)(?:negprompt|-m negprompt_cli)\s+(.*)", part.strip())
                if match:
                    found.append(match.group(1))
    found += [span[len("negprompt "):] for span in re.findall(r"`(negprompt [^`]+)`", text)]
    return found


def problems_in(line: str) -> list[str]:
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    command, path = typer.main.get_command(app), ["negprompt"]
    while tokens and hasattr(command, "commands") and tokens[0] in command.commands:
        path.append(tokens[0])
        command = command.commands[tokens.pop(0)]
    if hasattr(command, "commands"):  # a group: only a placeholder may follow
        return [f"unknown command {tokens[0]!r} after {' '.join(path)}"] if tokens and re.match(r"[a-z]", tokens[0]) \
            else []
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [f"{' '.join(path)} has no option {t.split('=')[0]}" for t in tokens
            if t.startswith("--") and t.split("=")[0] not in options]


def test_the_checker_finds_a_wrong_option_and_a_wrong_command():
    text = "```bash\nnegprompt score imgs/ --prompts p \\\n   --no-such-flag  # a comment --ignored\n" \
           "torchrun --nproc-per-node 2 -m negprompt_cli cache build x --bakcbone y\n```\n" \
           "and `negprompt cache purge`"
    assert [p for line in invocations(text) for p in problems_in(line)] == [
        "negprompt score has no option --no-such-flag", "negprompt cache build has no option --bakcbone",
        "unknown command 'purge' after negprompt cache"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_command_lines_exist(doc):
    lines = invocations(doc.read_text())
    assert [f"{line!r}: {p}" for line in lines for p in problems_in(line)] == []


def test_the_docs_hold_enough_command_lines_for_the_check_to_mean_something():
    assert sum(len(invocations(d.read_text())) for d in DOCS) >= 30
