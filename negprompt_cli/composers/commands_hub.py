"""``negprompt push`` and ``pull``: prompts on the Hugging Face Hub."""


from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..console import emit_json, info
from .app import (
    EPILOG,
    app,
    network_wait,
    reports_errors,
)
from .cli_options import (
    JsonOpt,
    OfflineOpt,
    PretrainedOpt,
)

TokenOpt = Annotated[str | None, typer.Option("--token", help="Hub token (default: HF_TOKEN or the saved login).")]


@app.command("push", epilog=EPILOG, short_help="Publish prompts to the Hugging Face Hub.")
@reports_errors
def push_command(
    artifact: Annotated[Path, typer.Argument(help="A prompts .safetensors artifact.")],
    repo_id: Annotated[str, typer.Argument(help="ORG/NAME on the Hub (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    branch: Annotated[str | None, typer.Option("--branch", "--revision", help="Push to this branch "
                                               "(created from main if missing).")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Tag the new commit (e.g. v1).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="A negprompt report (report.json or its "
                                                "folder): its table goes into the model card.")] = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Publish prompts to the Hugging Face Hub with a model card; prints the commit id."""
    from ..stages.hub import hub_options, push

    with network_wait():
        result = push(artifact, repo_id, hub_options(token=token), private=private, branch=branch, tag=tag,
                      message=message, report=report)
    info(f"Pushed {artifact} to {result['repo_id']} ({result['branch']}"
         + (f", tag {result['tag']}" if result["tag"] else "") + f"): commit {result['commit']}")
    if json_out:
        emit_json(result)
    else:
        sys.stdout.write(result["commit"] + "\n")


@app.command("pull", epilog=EPILOG, short_help="Download prompts from the Hugging Face Hub.")
@reports_errors
def pull_command(
    ref: Annotated[str, typer.Argument(help="ORG/NAME[@REVISION] (a branch, tag or commit id).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Copy the files here (default: only the "
                                             "Hugging Face cache).")] = None,
    offline: OfflineOpt = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Refuse the prompts unless they were "
                                                 "trained on this backbone.")] = None,
    pretrained: PretrainedOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Download prompts from the Hub into the cache (or --out), pinned to the resolved commit."""
    from ..outputs.artifact import load_prompts
    from ..stages.hub import hub_options, pull

    with network_wait():
        pulled = pull(ref, hub_options(offline, token), out)
    artifact = load_prompts(pulled.prompts)
    if backbone is not None:
        artifact.check_backbone({"backbone": backbone, "pretrained": pretrained}, f"hf://{pulled.repo_id}")
    result = {"repo_id": pulled.repo_id, "revision": pulled.revision, "commit": pulled.commit,
              "path": str(pulled.prompts), "kind": artifact.kind, "backbone": artifact.backbone,
              "classes": len(artifact.class_names)}
    info(f"{pulled.repo_id}@{pulled.commit[:12]}: {artifact.kind} prompts for {artifact.backbone.get('backbone')}, "
         f"{len(artifact.class_names)} classes -> {pulled.prompts}")
    if json_out:
        emit_json(result)
    else:
        sys.stdout.write(f"{pulled.commit}\t{pulled.prompts}\n")
