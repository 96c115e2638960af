"""Sharing prompts on the Hugging Face Hub: push, pull, and ``hf://ORG/NAME[@REVISION]`` references.

A Hub repo holds plain files: ``prompts.safetensors`` (the artifact itself),
``negprompt_config.json`` (its metadata as JSON), ``classnames.json`` and a ``README.md`` model
card. Only safetensors and JSON are ever read back: pickle checkpoints are never loaded.
Downloads go through the Hugging Face cache (revision-pinned, offline-capable).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..environment import hub_cache_from_environment, offline_requested
from ..errors import HubError, IncompatibleArtifactError, NotFoundError, UsageError
from ..outputs.artifact import SCHEMA_VERSION, PromptArtifact, load_prompts
from ..outputs.atomic import check_output_folder
from ..scoring.thresholds import stated

HF_SCHEME = "hf://"
PROMPTS_FILE = "prompts.safetensors"
CONFIG_FILE = "negprompt_config.json"
CLASSNAMES_FILE = "classnames.json"
CARD_FILE = "README.md"
ALLOWED = [PROMPTS_FILE, CONFIG_FILE, CLASSNAMES_FILE, CARD_FILE]


@dataclass(frozen=True)
class HubOptions:
    """Where and how to reach the Hub; ``None`` means huggingface_hub's own defaults / environment."""

    endpoint: str | None = None
    token: str | None = None
    hub_cache: str | None = None  # huggingface_hub's download cache (not negprompt's feature cache)
    offline: bool = False


def hub_options(offline: bool = False, token: str | None = None) -> HubOptions:
    """Options from the environment *now* (huggingface_hub itself reads most of it once, at import)."""
    return HubOptions(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token or os.environ.get("HF_TOKEN"),
                      hub_cache=hub_cache_from_environment(), offline=offline)


def is_hub_ref(value: str | Path) -> bool:
    return str(value).startswith(HF_SCHEME)


def parse_repo_ref(value: str) -> tuple[str, str | None]:
    """``[hf://]ORG/NAME[@REVISION]`` -> (repo id, revision or None), validated."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    ref = value[len(HF_SCHEME):] if value.startswith(HF_SCHEME) else value
    repo_id, _, revision = ref.partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"malformed Hub repo id {repo_id!r}: {exc}",
                         hint="use ORG/NAME, optionally @REVISION (a branch, tag or commit)") from exc
    if "@" in revision or (ref.endswith("@") and not revision):
        raise UsageError(f"malformed revision in {value!r}")
    if revision:
        check_revision(revision)
    return repo_id, revision or None


_REF_FORBIDDEN = set(" ~^:?*[\\") | {chr(c) for c in range(32)} | {"\x7f"}


def check_revision(revision: str) -> str:
    """A branch, tag or commit id by git's ref-name rules (``git check-ref-format``), before any path is built
    from it: huggingface_hub stores a branch's commit under ``refs/<revision>`` in its cache, so a revision like
    ``../../x`` would write outside it."""
    parts = revision.split("/")
    bad = (len(revision) > 255 or any(c in _REF_FORBIDDEN for c in revision) or ".." in revision
           or "@{" in revision or revision == "@" or revision.endswith(".")
           or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts))
    if bad:
        raise UsageError(f"malformed revision {revision!r}: not a branch, tag or commit name",
                         hint="a revision is a branch (main), a tag (v1.0), a commit id, or refs/pr/N")
    return revision


def _offline(options: HubOptions) -> bool:
    return offline_requested(options.offline)


@contextmanager
def hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Map huggingface_hub / network failures inside the block to one-line errors (exit 4, or 5), with
    huggingface_hub's own retry messages and progress bars kept off stderr (a 503 on every file printed dozens
    of "Retrying in 8s" lines before the one line that says what happened)."""
    try:
        with _quiet_hub():
            yield
    except (UsageError, IncompatibleArtifactError, HubError):
        raise
    except Exception as exc:
        mapped = _translate(exc, action, repo_id, revision)
        if mapped is None:
            raise
        raise mapped from exc


@contextmanager
def _quiet_hub() -> Iterator[None]:
    import logging

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    logger = logging.getLogger("huggingface_hub")
    level, bars_off = logger.level, are_progress_bars_disabled()
    logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_off:
            enable_progress_bars()


def _translate(exc: Exception, action: str, repo_id: str, revision: str | None) -> Exception | None:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = repo_id + (f"@{revision}" if revision else "")
    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"revision {revision!r} not found in {repo_id}", hint="check the branch, tag or commit id")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"Hub repository {repo_id} not found (or you lack access)",
                        hint="check the name, or pass --token / set HF_TOKEN for a private repo")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):  # the latter: a
        return IncompatibleArtifactError(f"{where} has no {PROMPTS_FILE}: not a negprompt prompts repo")  # subclass
    offline = isinstance(exc, OfflineModeIsEnabled) or offline_requested()
    if isinstance(exc, LocalEntryNotFoundError) and offline or isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{where} is not in the local cache and negprompt is offline (--offline or "
                        "HF_HUB_OFFLINE)", hint=f"run 'negprompt pull {where}' once while online")
    # What the Hub (or the network) actually said: huggingface_hub wraps it, e.g. a 503 inside "not in the cache"
    cause = network_cause(exc)
    cached = " (and it is not in the local cache)" if isinstance(exc, LocalEntryNotFoundError) else ""
    retry = "" if action.startswith("push") else "; use --offline to work from the cache"
    if cause.status is not None:
        if cause.status in (401, 403):
            return HubError(f"not authorised to {action} {where} (HTTP {cause.status})",
                            hint="pass --token or set HF_TOKEN with the needed permission")
        if cause.status == 404:
            return HubError(f"{where} not found on the Hub (HTTP 404){cached}",
                            hint="check the name and revision, or pass --token / set HF_TOKEN for a private repo")
        if 300 <= cause.status < 400:
            return HubError(f"the Hub answered {action} {where} with a redirect (HTTP {cause.status}) that was not "
                            f"followed{cached}", hint=f"check HF_ENDPOINT ({_endpoint()})")
        kind = "a server error" if cause.status >= 500 else "a refusal"
        return HubError(f"the Hub answered HTTP {cause.status} ({kind}) to {action} {where}{cached}",
                        hint=("the Hub or HF_ENDPOINT's server is failing: try again later" if cause.status >= 500
                              else f"check the request: {cause.text}") + retry)
    if cause.timeout:
        return HubError(f"the Hub did not answer in time to {action} {where}{cached}",
                        hint="try again, or raise HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT (seconds)" + retry)
    if cause.url is not None and cause.host_differs:
        return HubError(f"the Hub redirected {action} {where} to {cause.url}, which cannot be reached{cached}",
                        hint=f"check HF_ENDPOINT ({_endpoint()}) and any proxy in between" + retry)
    if cause.network or isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"could not reach the Hub at {_endpoint()} to {action} {where}: {cause.text}{cached}",
                        hint="check the network or HF_ENDPOINT" + retry)
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"Hub error while trying to {action} {where}: {str(exc).splitlines()[0]}")
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


@dataclass(frozen=True)
class NetworkCause:
    """The innermost thing a failed Hub call ran into: an HTTP status, a timeout, a refused or broken connection."""

    status: int | None = None
    timeout: bool = False
    network: bool = False
    url: str | None = None  # the URL the failing request went to
    host_differs: bool = False  # ... on another host than HF_ENDPOINT's (a redirect was followed)
    text: str = ""


def network_cause(exc: BaseException) -> NetworkCause:
    """Walk ``exc``'s causes (huggingface_hub and httpx wrap each other) for the HTTP status or the network
    failure behind it. Classes are recognised by name, so the httpx build huggingface_hub vendors is found too."""
    from urllib.parse import urlparse

    seen: set[int] = set()
    found = NetworkCause(text=type(exc).__name__)
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        status = getattr(getattr(current, "response", None), "status_code", None)
        if isinstance(status, int):
            return NetworkCause(status=status, text=f"HTTP {status}")
        try:
            url = str(current.request.url) if hasattr(current, "request") else None
        except Exception:  # httpx raises when an exception carries no request
            url = None
        if "Timeout" in name or isinstance(current, TimeoutError):
            return NetworkCause(timeout=True, url=url, text="timed out")
        if name in ("ConnectError", "RemoteProtocolError", "ReadError", "NetworkError", "ProxyError") \
                or isinstance(current, ConnectionError):
            host = urlparse(url).netloc if url else None
            differs = bool(host) and host != urlparse(_endpoint()).netloc
            reason = str(current).splitlines()[0] if str(current) else name
            if not found.network:  # the outermost network error knows the URL; the ones inside it, the reason
                found = NetworkCause(network=True, url=url, host_differs=differs, text=reason)
        current = current.__cause__ or current.__context__
    return found


# -- pulling ------------------------------------------------------------------------------------------------
@dataclass
class Pulled:
    repo_id: str
    revision: str | None
    commit: str
    directory: Path
    prompts: Path


def pull(ref: str, options: HubOptions = HubOptions(), out: Path | None = None) -> Pulled:
    """Download (or find in the cache) a prompts repo, validate it, and optionally copy it to ``out``."""
    from huggingface_hub import snapshot_download

    from .. import __version__

    repo_id, revision = parse_repo_ref(ref)
    if out is not None:
        check_output_folder(out)
    if out is not None and out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} exists and is not empty")
    if out is not None and not out.parent.exists():
        raise NotFoundError(f"output directory's parent does not exist: {out.parent}")
    with hub_errors("download", repo_id, revision):
        snapshot = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=options.hub_cache, local_files_only=_offline(options),
            allow_patterns=ALLOWED, endpoint=options.endpoint, token=options.token,
            library_name="negprompt", library_version=__version__,
        ))
    prompts = snapshot / PROMPTS_FILE
    if not prompts.is_file():
        raise IncompatibleArtifactError(
            f"{repo_id} has no {PROMPTS_FILE}: not a negprompt prompts repo (only safetensors and JSON are "
            "ever loaded from the Hub; pickle checkpoints are ignored)")
    validate_config(snapshot / CONFIG_FILE, repo_id)
    load_prompts(prompts)  # schema + integrity
    commit = snapshot.name
    directory = snapshot
    if out is not None:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for name in ALLOWED:
                if (snapshot / name).is_file():
                    shutil.copyfile(snapshot / name, staging / name)
            (staging / "negprompt_source.json").write_text(json.dumps(
                {"repo_id": repo_id, "revision": revision, "commit": commit}, indent=2) + "\n")
            if out.exists():
                out.rmdir()
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        directory = out
    return Pulled(repo_id, revision, commit, directory, directory / PROMPTS_FILE)


def validate_config(path: Path, repo_id: str) -> dict[str, Any]:
    if not path.is_file():
        raise IncompatibleArtifactError(f"{repo_id} has no {CONFIG_FILE}: not a negprompt prompts repo")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IncompatibleArtifactError(f"{repo_id}: {CONFIG_FILE} is not valid JSON ({exc})") from exc
    version = config.get("schema_version") if isinstance(config, dict) else None
    if version != SCHEMA_VERSION:
        raise IncompatibleArtifactError(f"{repo_id}: {CONFIG_FILE} has schema {version!r}; this negprompt reads "
                                        f"schema {SCHEMA_VERSION}",
                                        hint="upgrade negprompt" if isinstance(version, int) else None)
    return config


def resolve_prompts(value: str | Path, options: HubOptions = HubOptions()) -> Path:
    """A local path as is; ``hf://ORG/NAME[@REV]`` through the Hub cache (offline-capable)."""
    if not is_hub_ref(value):
        return Path(value)
    return pull(str(value), options).prompts


# -- pushing ------------------------------------------------------------------------------------------------
def model_card(artifact: PromptArtifact, repo_id: str) -> str:
    """The repo's README.md. Every value from the artifact is untrusted text: escaped for Markdown and HTML
    (``markdown_text``), so a class or backbone name cannot put a tag, a script or a link in the card."""
    from huggingface_hub import ModelCard, ModelCardData

    from ..report.table import markdown_text as md

    backbone = artifact.backbone
    arch = str(backbone.get("backbone"))
    base_model = _base_model(arch, backbone.get("pretrained"))
    tags = ["out-of-distribution-detection", "clip", "prompt-learning", "negprompt"]
    if re.fullmatch(r"[A-Za-z0-9/_.:@-]{1,96}", arch):  # a tag only from a plain name
        tags.append(f"open_clip:{arch}")
    data = ModelCardData(library_name="negprompt", tags=tags, base_model=base_model,
                         pipeline_tag="zero-shot-image-classification")
    training = artifact.training
    threshold = artifact.extra.get("threshold")
    learner_options = training.get("learner_options", training)
    optim = training.get("optim", {}) if isinstance(training.get("optim"), dict) else {}
    loss_variant = learner_options.get("loss_variant", "-") if isinstance(learner_options, dict) else "-"
    lines = [
        f"# {md(repo_id)}", "",
        f"{'NegPrompt negative' if artifact.kind == 'negative' else 'CoOp positive'} prompts for "
        f"`{md(arch).replace('`', '')}` ({md(backbone.get('pretrained') or 'weights bundled with the backbone')}), "
        "trained with [negprompt](https://github.com/) on "
        f"{len(artifact.class_names)} classes.", "",
        "## Use with your own class names", "",
        "```bash",
        f"negprompt transfer --prompts hf://{repo_id} --names my_classes.txt --out mine.safetensors",
        "negprompt score images/ --prompts mine.safetensors --out scores.csv",
        "```", "",
        "## Training", "",
        "| setting | value |", "|---|---|",
        f"| stage | {md(training.get('stage'))} |",
        f"| loss variant | {md(loss_variant)} |",
        f"| context tokens | {md(artifact.prompt.get('n_ctx'))} |",
        f"| negative prompts per class | {md(artifact.prompt.get('n_neg', '-'))} |",
        f"| epochs | {md(optim.get('epochs'))} |",
        f"| seed | {md(optim.get('seed'))} |",
    ]
    if isinstance(threshold, dict) and isinstance(threshold.get("value"), (int, float)):
        lines.append(f"| ID threshold ({md(stated(threshold))}) | {threshold['value']:.6g} |")
    report = artifact.extra.get("report")
    if report:
        lines += ["", "## OOD results", "", report]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return str(ModelCard(content))


def _base_model(arch: str, pretrained: str | None) -> str | None:
    import open_clip

    if arch.startswith("hf-hub:"):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(arch[len("hf-hub:"):])
        except HFValidationError:
            return None
        return arch[len("hf-hub:"):]
    if not pretrained:
        return None
    try:
        cfg = open_clip.get_pretrained_cfg(arch.replace("/", "-"), pretrained) or {}
    except Exception:
        return None
    return (cfg.get("hf_hub") or "").rstrip("/") or None


def report_markdown(path: Path) -> str:
    """The paper-style table of a ``negprompt report --json`` output, for the model card."""
    from ..report.table import markdown_table
    from ..report.table import markdown_text as md

    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise NotFoundError(f"report not found: {file}")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
        table = markdown_table(report)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UsageError(f"{file} is not a negprompt report JSON ({exc})") from exc
    return (f"Scorer {md(report.get('scorer'))}; FPR convention: {md(report.get('fpr_convention'))} — "
            f"{md(report.get('fpr_definition'))}.\n\n{table}")


def push(path: Path, repo_id: str, options: HubOptions = HubOptions(), *, private: bool = False,
         branch: str | None = None, tag: str | None = None, message: str | None = None,
         report: Path | None = None) -> dict[str, Any]:
    """Upload an artifact as plain files; returns the created commit id.

    ``report`` (a ``negprompt report`` JSON or its ``--out`` folder) adds the OOD table to the card.
    """
    from huggingface_hub import HfApi

    artifact = load_prompts(path)  # refuse to publish something that is not an artifact
    if report is not None:
        artifact.extra["report"] = report_markdown(report)
    repo_id, revision = parse_repo_ref(repo_id)
    if revision:
        raise UsageError("name the branch with --branch, not @REVISION, when pushing")
    for given in (branch, tag):
        if given is not None:
            check_revision(given)
    if _offline(options):
        raise HubError("cannot push while offline", hint="drop --offline / unset HF_HUB_OFFLINE")
    api = HfApi(endpoint=options.endpoint, token=options.token)
    with tempfile.TemporaryDirectory(prefix="negprompt-push-") as tmp:
        folder = Path(tmp)
        shutil.copyfile(path, folder / PROMPTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(artifact.metadata(), indent=2, sort_keys=True) + "\n")
        (folder / CLASSNAMES_FILE).write_text(json.dumps(artifact.class_names, indent=2) + "\n")
        (folder / CARD_FILE).write_text(model_card(artifact, repo_id), encoding="utf-8")
        with hub_errors("push to", repo_id, branch):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if branch:
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch,
                                     commit_message=message or f"Upload negprompt {artifact.kind} prompts")
            if tag:
                api.create_tag(repo_id, tag=tag, revision=info.oid)
    return {"repo_id": repo_id, "commit": info.oid, "branch": branch or "main", "tag": tag,
            "url": getattr(info, "commit_url", None), "files": ALLOWED}
