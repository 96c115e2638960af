"""Hints can be followed as printed (#36 item 3): each error's hint, applied to the command line, gets the next
run past that error."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import invoke, make_image_folder


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hints")
    make_image_folder(root / "train", classes=("red_stripes", "green_bars"), per_class=4)
    result = invoke(["fit-pos", "--data", str(root / "train"), "--backbone", "toy", "--epochs", "1", "--out",
                     str(root / "pos.safetensors"), "--cache-dir", str(root / "cache"), "--quiet"])
    assert result.exit_code == 0, result.stderr
    return root


def hint_flags(stderr: str) -> list[str]:
    """The flags a "Hint: use FLAGS, or ..." line names, split as a shell would split them."""
    hint = next(line for line in stderr.splitlines() if line.startswith("Hint: "))
    match = re.match(r"Hint: use (.*?), or ", hint)
    assert match, hint
    return shlex.split(match.group(1))


def replace_flags(args: list[str], flags: list[str]) -> list[str]:
    """``args`` with each flag of ``flags`` set to the value the hint gives (added when absent)."""
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in given:
            skip = True
            continue
        out.append(arg)
    for flag, value in given.items():
        out += [flag, value]
    return out


def test_the_backbone_mismatch_hint_of_score_can_be_followed(toy_prompts):
    """It used to say "use --backbone toy --pretrained None", which named weights called "None"."""
    args = ["score", str(toy_prompts / "train"), "--prompts", str(toy_prompts / "pos.safetensors"), "--backbone",
            "ViT-B/16", "--pretrained", "none", "--quiet", "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)
    assert refused.exit_code == 5 and "was trained on toy" in refused.stderr
    flags = hint_flags(refused.stderr)
    assert flags == ["--backbone", "toy"]
    args = replace_flags([a for a in args if a not in ("--pretrained", "none")], flags)
    followed = invoke(args)
    assert followed.exit_code == 0, followed.stderr


def test_fit_neg_refuses_another_backbone_before_loading_it_and_its_hint_works(toy_prompts, tmp_path):
    args = ["fit-neg", "--data", str(toy_prompts / "train"), "--pos", str(toy_prompts / "pos.safetensors"),
            "--backbone", "RN50", "--epochs", "1", "--out", str(tmp_path / "neg.safetensors"), "--quiet",
            "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)  # offline: loading RN50's weights first would be exit 4, not this
    assert refused.exit_code == 5 and "was trained on toy, but the backbone is RN50" in refused.stderr
    followed = invoke(replace_flags(args, hint_flags(refused.stderr)))
    assert followed.exit_code == 0, followed.stderr


def suggestion(stderr: str) -> str:
    """The first (closest) name a "did you mean X?" or "did you mean X, Y?" (in the error or its hint) suggests."""
    match = re.search(r"did you mean '?([\w+.-]+)'?[?,]", stderr)
    assert match, stderr
    return match.group(1)


def test_a_misspelt_scorer_is_fixed_by_its_suggestion(toy_prompts, tmp_path):
    args = ["score", str(toy_prompts / "train"), "--prompts", str(toy_prompts / "pos.safetensors"), "--scorer", "mmc",
            "--out", str(tmp_path / "s.csv"), "--quiet", "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)
    assert refused.exit_code == 2 and "unknown scorer 'mmc'" in refused.stderr
    followed = invoke([suggestion(refused.stderr) if a == "mmc" else a for a in args])
    assert followed.exit_code == 0, followed.stderr


def test_a_misspelt_learner_option_is_fixed_by_its_suggestion(toy_prompts, tmp_path):
    args = ["fit-neg", "--data", str(toy_prompts / "train"), "--pos", str(toy_prompts / "pos.safetensors"),
            "--learner-option", "n_negs=1", "--epochs", "1", "--out", str(tmp_path / "neg.safetensors"), "--quiet",
            "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)
    assert refused.exit_code == 2 and "has no option 'n_negs'" in refused.stderr
    fixed = f"{suggestion(refused.stderr)}=1"
    followed = invoke([fixed if a == "n_negs=1" else a for a in args])
    assert followed.exit_code == 0, followed.stderr


def hint_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("Hint: "))[len("Hint: "):]


def test_a_missing_output_folder_is_fixed_by_the_command_its_hint_prints(toy_prompts, tmp_path):
    import subprocess

    out = tmp_path / "runs" / "today" / "s.csv"
    args = ["score", str(toy_prompts / "train"), "--prompts", str(toy_prompts / "pos.safetensors"), "--out", str(out),
            "--quiet", "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)
    assert refused.exit_code == 3 and "output directory does not exist" in refused.stderr
    command = hint_line(refused.stderr).removeprefix("create it first: ")
    assert shlex.split(command)[:2] == ["mkdir", "-p"]
    subprocess.run(shlex.split(command), check=True)
    followed = invoke(args)
    assert followed.exit_code == 0 and out.exists(), followed.stderr


def test_an_unknown_format_is_fixed_by_its_hint(toy_prompts, tmp_path):
    args = ["score", str(toy_prompts / "train"), "--prompts", str(toy_prompts / "pos.safetensors"), "--format",
            "xlsx", "--out", str(tmp_path / "s"), "--quiet", "--cache-dir", str(toy_prompts / "cache")]
    refused = invoke(args)
    assert refused.exit_code == 2 and hint_line(refused.stderr) == "choose csv, jsonl, parquet"
    followed = invoke([a if a != "xlsx" else "jsonl" for a in args])
    assert followed.exit_code == 0, followed.stderr


def test_the_no_decision_warning_of_zero_shot_is_fixed_by_calibrating_as_it_says(toy_prompts, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    args = ["score", str(toy_prompts / "train"), "--zero-shot", "--names", str(names), "--backbone", "toy",
            "--scorer", "mcm", "--out", str(tmp_path / "s.csv"), "--cache-dir", str(toy_prompts / "cache"), "--json"]
    first = invoke(args)
    assert first.exit_code == 0 and json.loads(first.stdout)["flagged_ood"] is None
    assert "get one with --calibrate ID_IMAGES (a folder of in-distribution images) or --threshold" in first.stderr
    followed = invoke([*args, "--calibrate", str(toy_prompts / "train"), "--keep", "0.8"])  # 8 images: 0.95 needs 19
    assert followed.exit_code == 0, followed.stderr
    assert json.loads(followed.stdout)["flagged_ood"] is not None and "no stored ID threshold" not in followed.stderr


def _hint_texts() -> list[tuple[str, int, str]]:
    """Every hint the code can print: the literal text of each ``hint=`` argument (f-strings' fixed parts) and of
    each constant named ``*HINT``, with where it is."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted([*root.joinpath("negprompt_cli").rglob("*.py"), *root.joinpath("plugins").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            values = []
            if isinstance(node, ast.keyword) and node.arg == "hint":
                values.append(node.value)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("HINT")
                                                    for t in node.targets):
                values.append(node.value)
            for value in values:
                text = "".join(part.value for part in ast.walk(value)
                               if isinstance(part, ast.Constant) and isinstance(part.value, str))
                found.append((str(path.relative_to(root)), node.lineno if hasattr(node, "lineno") else 0, text))
    return found


def test_every_flag_and_command_a_hint_names_exists():
    """A hint that names a flag no command has, or a subcommand that does not exist, cannot be followed as printed
    (the check runs over the source: every hint, including those of errors no test provokes)."""
    import typer

    from negprompt_cli.composers.cli import app

    group = typer.main.get_command(app)
    commands = {name: group.commands[name] for name in group.commands}
    flags = {opt for command in commands.values() for sub in [command, *getattr(command, "commands", {}).values()]
             for param in sub.params for opt in param.opts}
    import subprocess
    import sys

    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True,
                              text=True).stdout  # a hint about launching names torchrun's own flags
    hints = _hint_texts()
    assert len(hints) > 100  # the walk finds them
    unknown = []
    for where, line, text in hints:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
            theirs = "torchrun" in text or "rendezvous" in text
            if flag not in flags and not (theirs and re.search(rf"{flag}[\s,=\]]", torchrun)):
                unknown.append(f"{where}:{line}: {flag}")
        for command in re.findall(r"negprompt ([a-z][a-z-]+)", text):
            if command not in commands:
                unknown.append(f"{where}:{line}: negprompt {command}")
    assert unknown == []
