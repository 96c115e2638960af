"""``negprompt plugins``, ``env`` and ``inspect``: what is installed, where, and what a prompts file holds."""


from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import emit_json, say
from .app import (
    EPILOG,
    app,
    reports_errors,
)
from .cli_options import (
    JsonOpt,
)


def show(data: Any, as_json: bool, lines: Callable[[], Iterable[str]]) -> None:
    """An information command's answer: ``data`` as JSON on stdout with --json, else its lines for people."""
    if as_json:
        emit_json(data)
        return
    for line in lines():
        say(line)


@app.command("plugins", epilog=EPILOG)
@reports_errors
def plugins_command(json_out: JsonOpt = False) -> None:
    """List loaded plugins and what each registers."""
    from ..registry import get_host

    rows = get_host().describe()
    show(rows, json_out, lambda: describe_plugins(rows))


def describe_plugins(rows: list[dict[str, Any]]) -> Iterator[str]:
    for row in rows:  # a block per plugin: names are never cut or split, whatever the terminal's width
        yield f"{row['name']} {row['version'] or ''}".rstrip() + (f"  FAILED: {row['error']}" if row["error"] else "")
        for kind, entries in (row.get("entries") or {}).items():
            yield f"  {kind}:"
            for entry in entries:
                aliases = f" (also {', '.join(entry['aliases'])})" if entry["aliases"] else ""
                yield f"    {entry['name']}{aliases}" + (f": {entry['description']}" if entry["description"] else "")
                if entry.get("options"):
                    yield "      options: " + ", ".join(f"{o['name']} ({o['type']}, default {o['default']!r})"
                                                      for o in entry["options"])
                if entry.get("fetched"):
                    fetched = entry["fetched"]
                    yield f"      fetched on first use from: {fetched['source'] or 'its addresses'}" + (
                        f"; licence: {fetched['licence']}" if fetched["licence"] else "")
        yield f"  hooks: {', '.join(row['hooks'])}"


@app.command("env", epilog=EPILOG, short_help="Versions, devices and caches, for a bug report.")
@reports_errors
def env_command(json_out: JsonOpt = False) -> None:
    """Versions, CUDA devices, cache locations and settings from the environment: paste it into a bug report."""
    from ..environment import describe_environment

    facts = describe_environment()
    show(facts, json_out, lambda: environment_lines(facts))


def environment_lines(facts: dict[str, Any]) -> Iterator[str]:
    gpu = facts["torch"]
    yield f"negprompt {facts['negprompt']}, python {facts['python']} ({facts['executable']}), {facts['platform']}"
    yield "packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in facts["packages"].items())
    yield (f"torch {gpu['version']}: " + (f"CUDA {gpu['cuda_build']} build" if gpu["cuda_build"] else "CPU-only build")
           + f", CUDA available: {'yes' if gpu['cuda_available'] else 'no'}, {gpu['cpu_threads']} CPU threads")
    for device in gpu["devices"]:
        yield (f"  cuda:{device['index']}: {device['name']}, compute {device['capability']}, "
               f"{device['memory_gib']} GiB, bf16 {'yes' if device['bf16'] else 'no'}")
    cache = facts["feature_cache"]
    yield f"feature cache: {cache['path']}" + ("" if cache["exists"] else " (not created yet)")
    yield f"Hugging Face cache: {facts['hub']['cache']}, offline: {'yes' if facts['hub']['offline'] else 'no'}"
    yield "plugins: " + ", ".join(f"{p['name']} {p['version'] or ''}".strip()
                                  + (f" (failed: {p['error']})" if p["error"] else "") for p in facts["plugins"])
    if facts["environment"]:
        yield "environment: " + ", ".join(f"{name}={value}" for name, value in facts["environment"].items())


@app.command("inspect", epilog=EPILOG, short_help="What a prompts file holds.")
@reports_errors
def inspect_command(
    prompts: Annotated[Path, typer.Argument(help="A prompts .safetensors file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a prompts artifact holds: backbone, layout, classes, training settings."""
    from ..outputs.artifact import load_prompts

    artifact = load_prompts(prompts)
    meta = artifact.metadata()
    meta["tensors"] = {k: list(v.shape) for k, v in artifact.tensors.items()}
    show(meta, json_out, lambda: describe_artifact(prompts, artifact))


def describe_artifact(path: Path, artifact: Any) -> list[str]:
    """``inspect``'s human-readable lines: what a user asks of a prompts file, with no Python reprs."""
    from ..registry import get_host
    from ..scoring.calibration import class_thresholds, threshold_words
    from ..scoring.thresholds import stated

    backbone = artifact.backbone
    prompt, training, extra = artifact.prompt, artifact.training, artifact.extra
    names = artifact.class_names
    learner = training.get("learner") or prompt.get("learner") or "?"
    weights = backbone.get("pretrained") or "weights bundled with the backbone"
    lines = [f"{path}: {artifact.kind} prompts ({training.get('stage', '?')}, learner {learner}), "
             f"schema {artifact.schema_version}",
             f"  backbone:  {backbone.get('backbone')} ({weights})"
             + (", QuickGELU" if backbone.get("quick_gelu") else "")]
    host = get_host()
    host.fill()
    registered = host.backbones.get(str(backbone.get("backbone")))  # its plugin's words: text path, score family
    if registered is not None and registered.description:
        lines.append(f"             {registered.description}")
    layout = [f"{prompt.get('n_ctx')} context tokens", "class-specific" if prompt.get("csc") else "shared",
              f"suffix {prompt.get('suffix', '.')!r}"]
    if prompt.get("ctx_init"):
        layout.append(f"initialised from {prompt['ctx_init']!r}")
    if artifact.kind == "negative":
        layout.append(f"{prompt.get('n_neg', '?')} negative prompt(s) per class"
                      + (" (class-specific)" if prompt.get("neg_csc") else ""))
    lines.append("  prompt:    " + ", ".join(layout))
    lines.append("  tensors:   " + ", ".join(f"{k} {'x'.join(map(str, v.shape))}"
                                             for k, v in sorted(artifact.tensors.items())))
    lines.append(f"  classes:   {len(names)} ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
    optim = training.get("optim", {})
    if optim:
        lines.append(f"  training:  {optim.get('epochs')} epochs, {optim.get('optimizer')} lr {optim.get('lr')}, "
                     f"batch {optim.get('batch_size')}, seed {optim.get('seed')}"
                     + (f", {training['precision']}" if training.get("precision") else "")
                     + (f", {len(training['train_classes'])} class(es) trained on"
                        if isinstance(training.get("train_classes"), list) else ""))
    own = training.get("learner_options")
    if isinstance(own, dict) and own:  # the learner's own settings (--learner-option), as it was trained with
        lines.append(f"  learner:   {learner}: " + ", ".join(f"{k} {v}" for k, v in own.items()))
    data = training.get("data")
    if isinstance(data, dict) and "shots" in data:
        shots = "every image" if data["shots"] is None else f"{data['shots']} shots a class"
        said = [shots + (f" ({data['train_images']} images)" if isinstance(data.get("train_images"), int) else "")]
        views = data.get("aug_views") or 0
        said.append(f"{views} augmented view(s) ({data.get('augment', 'pad-crop')})" if views else "no augmentation")
        if data.get("val_fraction"):
            said.append(f"{data['val_fraction']:.0%} held out for validation")
        lines.append("  data:      " + ", ".join(said))
    accuracies = {k: v for k, v in extra.items() if k.endswith("accuracy") and isinstance(v, (int, float))}
    if accuracies:
        lines.append("  accuracy:  " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in accuracies.items()))
    threshold = extra.get("threshold")
    if isinstance(threshold, dict) and "value" in threshold:
        per_class = class_thresholds(threshold)
        value = f"{threshold['value']:.6g}" if per_class is None else threshold_words(threshold["value"], per_class)
        lines.append(f"  threshold: {value} for the {threshold.get('scorer', 'negprompt')} scorer "
                     f"({stated(threshold)}; valid for these {len(names)} class names)")
    else:
        lines.append("  threshold: none stored (score gives no OOD decision without --calibrate or --threshold)")
    transfer = extra.get("transfer")
    if isinstance(transfer, dict):
        source = transfer.get("source_classes")
        lines.append(f"  transfer:  re-targeted from {len(source) if isinstance(source, list) else '?'} trained "
                     "class(es)")
    return lines
