"""Built-in backbone plugin: open_clip models (ViT-B/16 default, ViT-B/32, RN50, RN101, any other).

Names accepted:

* the registered names: ``ViT-B/16`` (also spelled ``ViT-B-16``), ``ViT-B/32``, ``RN50``, ``RN101``, each with
  the pretrained tag the NegPrompt paper or CLIP used by default, and the families OOD work uses now
  (``FAMILIES``: SigLIP, SigLIP 2, DFN, MetaCLIP, EVA-02-CLIP) with their open_clip tags;
* any open_clip architecture (``open_clip.list_models()``), with ``--pretrained`` naming a tag;
* ``hf-hub:org/repo`` and ``local-dir:/path`` (open_clip's own config + weights layout).

``--pretrained`` is a tag, a local checkpoint file, or ``none`` for random weights.

open_clip is imported when a model is built or an unregistered name looked up, never when the plugin registers
(it costs seconds: it pulls in torchvision and timm). Each backbone names the files its weights came from
(``Backbone.weights_files``), so a run whose images are all cached can skip building it; a ``hf-hub:`` model
names none (each run asks the Hub for the repository's latest revision), nor do random weights.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

import torch

from negprompt.plugin import (
    Backbone,
    HubError,
    NegPromptNotice,
    NotFoundError,
    UsageError,
    __version__,
    hookimpl,
    hub_cache_from_environment,
    world_checkpoint_dir,
    world_lexicon_dir,
)

# name -> (open_clip architecture, default pretrained tag)
KNOWN = {
    "ViT-B/16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "ViT-B/32": ("ViT-B-32", "laion2b_s34b_b79k"),
    "RN50": ("RN50", "openai"),
    "RN101": ("RN101", "openai"),
}
# The families OOD work uses now, by their open_clip names and tags: name -> (architecture, tag, what they are).
# Registered without aliases: DFN and MetaCLIP share one architecture.
FAMILIES = {
    "SigLIP-B/16": ("ViT-B-16-SigLIP", "webli", "SigLIP (sigmoid loss), WebLI"),
    "SigLIP2-B/16": ("ViT-B-16-SigLIP2", "webli", "SigLIP 2, WebLI"),
    "DFN-B/16": ("ViT-B-16-quickgelu", "dfn2b", "DFN-2B (data filtering networks)"),
    "MetaCLIP-B/16": ("ViT-B-16-quickgelu", "metaclip_fullcc", "MetaCLIP, full CommonCrawl curation"),
    "EVA02-B/16": ("EVA02-B-16", "merged2b_s8b_b131k", "EVA-02-CLIP, Merged-2B"),
}
# Architectures whose text tower is bidirectional and pooled at the last position (open_clip's configs:
# no_causal_mask, pool_type "last"); every other one registered here is causal, pooled at the end-of-text token.
BIDIRECTIONAL_TEXT = {"ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"}


def text_path(arch: str) -> str:
    """How the core runs this architecture's text tower, in words (``negprompt plugins`` shows it)."""
    if arch in BIDIRECTIONAL_TEXT:
        return ("text tower bidirectional, last-pooled: the whole context runs; trained with a sigmoid: the sigmoid-* "
                "scorers use its logit scale and bias, the others read cosines or its scale only")
    return ("text tower causal: cut at the end-of-text token, shared prefixes; trained with a softmax: scorers read "
            "cosines or its logit scale")


RANDOM = ("none", "random")
SCHEMES = ("hf-hub:", "local-dir:")
# What an hf-hub: backbone fetches: open_clip's config and safetensors weights, in the names open_clip looks for.
HUB_CONFIG = "open_clip_config.json"
HUB_SAFETENSORS = ["open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors"]
HUB_PICKLES = ["open_clip_pytorch_model.bin", "pytorch_model.bin", "open_clip_pytorch_model.pth", "pytorch_model.pth",
               "model.pth"]
ALLOW_PICKLE_ENV = "NEGPROMPT_ALLOW_PICKLE_WEIGHTS"  # =1: also pickle checkpoints (torch.load, weights_only)


def _open_clip() -> ModuleType:
    import open_clip  # noqa: PLC0415 (see the module docstring)

    return open_clip


@hookimpl
def register_backbones(register: Callable[..., None]) -> None:
    for name, (arch, tag) in KNOWN.items():
        aliases = (arch,) if arch != name else ()
        register(name, partial(load_openclip, name, arch, tag), aliases=aliases,
                 description=f"open_clip {arch}, default weights {tag!r}; {text_path(arch)}")
    for name, (arch, tag, what) in FAMILIES.items():
        register(name, partial(load_openclip, name, arch, tag),
                 description=f"{what}: open_clip {arch}, weights {tag!r}; {text_path(arch)}")
    register("toy", load_toy, aliases=("world",),
             description="tiny CLIP trained on negprompt's procedural world (ships with the package; offline)")


def load_toy(pretrained: str | None, device: torch.device, cache_dir: str | None = None,
             quick_gelu: bool | None = None) -> Backbone:
    """The offline world's CLIP, loaded through open_clip's own ``local-dir:`` path."""
    backbone = load_openclip("toy", f"local-dir:{world_checkpoint_dir()}", None, pretrained, device, cache_dir,
                             quick_gelu)
    backbone.default_lexicon = str(world_lexicon_dir())  # WordNet words mean nothing to the world CLIP
    return backbone


@hookimpl
def resolve_backbone(name: str):
    if name.startswith(SCHEMES):
        return partial(load_openclip, name, name, None)
    arch = name.replace("/", "-")
    if arch in _open_clip().list_models():
        return partial(load_openclip, arch, arch, None)
    return None


def load_openclip(name: str, arch: str, default_tag: str | None, pretrained: str | None,
                  device: torch.device, cache_dir: str | None = None,
                  quick_gelu: bool | None = None) -> Backbone:
    """Build a frozen open_clip model; every failure becomes a one-line negprompt error."""
    source = arch  # what open_clip builds from: an hf-hub: model is fetched first, then read as a local-dir:
    if arch.startswith(SCHEMES):
        if pretrained not in (None, ""):
            raise UsageError(f"{arch} carries its own weights; drop --pretrained {pretrained}")
        if arch.startswith("local-dir:") and not Path(arch[len("local-dir:"):]).is_dir():
            raise NotFoundError(f"backbone directory not found: {arch[len('local-dir:'):]}")
        if arch.startswith("hf-hub:"):
            source = f"local-dir:{fetch_hub_backbone(arch[len('hf-hub:'):], cache_dir)}"
        kwargs: dict = {}
        tag = None
    else:
        tag = pretrained if pretrained not in (None, "") else default_tag
        if tag is None:
            raise UsageError(f"backbone {arch!r} has no default weights; name them with --pretrained",
                             hint=_tag_hint(arch))
        kwargs = {"pretrained": None if tag.lower() in RANDOM else _check_tag(arch, tag)}
        if tag.lower() not in RANDOM and not os.path.exists(tag):
            _fail_fast_without_network(arch, tag, cache_dir)
        if quick_gelu is None:
            quick_gelu = _tag_quick_gelu(arch, tag)
        kwargs["force_quick_gelu"] = bool(quick_gelu)
    try:
        with _quiet_open_clip_logging():
            model, _, preprocess = _open_clip().create_model_and_transforms(source, device=device,
                                                                            cache_dir=cache_dir, **kwargs)
    except (RuntimeError, OSError, FileNotFoundError, ValueError) as exc:
        raise _load_error(arch, tag, exc) from exc
    model.eval().requires_grad_(False)
    if arch.startswith(SCHEMES):
        quick_gelu = _uses_quick_gelu(model)
    size = _open_clip().get_model_preprocess_cfg(model).get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    base_model = None
    if tag and tag.lower() not in RANDOM and not os.path.exists(tag):
        cfg = _open_clip().get_pretrained_cfg(arch, tag) or {}
        base_model = (cfg.get("hf_hub") or "").rstrip("/") or None
    elif arch.startswith("hf-hub:"):
        base_model = arch[len("hf-hub:"):]
    return Backbone(
        name=name,
        pretrained=None if arch.startswith(SCHEMES) else tag,
        model=model,
        preprocess=preprocess,
        tokenizer=_open_clip().get_tokenizer(source),
        image_size=int(size),
        quick_gelu=bool(quick_gelu),
        base_model=base_model,
        weights_files=_weights_files(arch, source, tag, cache_dir),
    )


def _weights_files(arch: str, source: str, tag: str | None, cache_dir: str | None) -> tuple[str, ...]:
    """The files open_clip read the weights (and config) from, when they are fixed: a local-dir: folder's
    config and weights, a checkpoint file, a tag's file in the Hugging Face cache. None for an hf-hub: model or
    random weights (see the module docstring)."""
    if arch.startswith("hf-hub:"):
        return ()
    if source.startswith("local-dir:"):
        folder = Path(source[len("local-dir:"):])
        names = [HUB_CONFIG, *HUB_SAFETENSORS, *HUB_PICKLES]
        return tuple(str((folder / name).resolve()) for name in names if (folder / name).is_file())
    if tag is None or tag.lower() in RANDOM:
        return ()
    if os.path.exists(tag):
        return (str(Path(tag).resolve()),)
    return tuple(str(Path(found).resolve()) for found in _cached_weights(arch, tag, cache_dir))


def fetch_hub_backbone(repo_id: str, cache_dir: str | None) -> Path:
    """The folder of an hf-hub: model in the Hugging Face cache, holding only open_clip's config and safetensors
    weights (pickle checkpoints too only with NEGPROMPT_ALLOW_PICKLE_WEIGHTS=1). Which repository is fetched is
    said before anything is fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"malformed Hub repo id in hf-hub:{repo_id}: {exc}") from None
    pickles = os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")
    allowed = [HUB_CONFIG, *HUB_SAFETENSORS, *(HUB_PICKLES if pickles else [])]
    warnings.warn(f"backbone hf-hub:{repo_id}: {HUB_CONFIG} and "
                  + ("weights (safetensors or pickle)" if pickles else "safetensors weights only")
                  + f" from the Hub repository {repo_id} at revision main (or from the Hugging Face cache)",
                  NegPromptNotice, stacklevel=2)
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=allowed,
                                        cache_dir=cache_dir or hub_cache_from_environment(),
                                        endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="negprompt",
                                        library_version=__version__))
    except Exception as exc:
        raise _hub_fetch_error(repo_id, exc) from exc
    if not (folder / HUB_CONFIG).is_file():
        raise UsageError(f"hf-hub:{repo_id} has no {HUB_CONFIG}: not an open_clip model repository")
    weights = HUB_SAFETENSORS + (HUB_PICKLES if pickles else [])
    if not any((folder / name).is_file() for name in weights):
        raise UsageError(f"hf-hub:{repo_id} has no safetensors weights ({', '.join(HUB_SAFETENSORS)}); pickle "
                         "checkpoints from the Hub are not loaded unless you opt in",
                         hint=f"set {ALLOW_PICKLE_ENV}=1 if you trust the repository's .bin / .pth files")
    return folder


def _hub_fetch_error(repo_id: str, exc: Exception) -> Exception:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"Hub repository {repo_id} (backbone hf-hub:{repo_id}) not found (or you lack access)",
                        hint="check the name, or set HF_TOKEN for a private repository")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return HubError(f"could not fetch hf-hub:{repo_id}: not in the local cache and the Hub cannot be reached",
                        hint=OFFLINE_HINT)
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return HubError(f"could not fetch hf-hub:{repo_id}: {type(exc).__name__}: {detail}",
                    hint="check the network or HF_ENDPOINT; --offline works from the cache")


@contextmanager
def _quiet_open_clip_logging() -> Iterator[None]:
    """open_clip logs failures on the root logger; we report them as one negprompt line instead."""
    if os.environ.get("NEGPROMPT_DEBUG", "") not in ("", "0"):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _check_tag(arch: str, tag: str) -> str:
    if os.path.exists(tag):
        return tag
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    if tag in tags:
        return tag
    if any(sep in tag for sep in ("/", os.sep)) or tag.endswith((".safetensors", ".bin", ".pt", ".pth")):
        raise NotFoundError(f"pretrained weights file not found: {tag}")
    close = difflib.get_close_matches(tag, tags, n=1)
    raise UsageError(f"unknown pretrained tag {tag!r} for {arch}"
                     + (f" (did you mean {close[0]!r}?)" if close else ""),
                     hint=_tag_hint(arch))


def _tag_hint(arch: str) -> str:
    tags = _open_clip().list_pretrained_tags_by_model(arch)
    listed = ", ".join(tags) if tags else "(none)"
    return f"valid tags for {arch}: {listed}; or a checkpoint file, or 'none' for random weights"


def _tag_quick_gelu(arch: str, tag: str) -> bool:
    if arch.endswith("-quickgelu"):
        return True
    if tag.lower() in RANDOM or os.path.exists(tag):
        return False
    return bool((_open_clip().get_pretrained_cfg(arch, tag) or {}).get("quick_gelu", False))


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


OFFLINE_HINT = ("with no network: --offline uses weights already in the cache; --pretrained FILE a local "
                "checkpoint; --backbone local-dir:PATH an open_clip folder; --backbone toy the offline world's CLIP")


def _cached_weights(arch: str, tag: str, cache_dir: str | None) -> list[str]:
    """Where open_clip would find the tag's weights in the Hugging Face cache without asking the Hub (empty when
    it would not)."""
    from huggingface_hub import try_to_load_from_cache

    hub = (_open_clip().get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or ""
    repo, filename = os.path.split(hub)  # "org/name/" or "org/name/file", as open_clip splits it
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    cache = cache_dir or hub_cache_from_environment()
    if not repo:
        return []
    found = [try_to_load_from_cache(repo, name, cache_dir=cache) for name in names]
    return [f for f in found if isinstance(f, str)]


def _unreachable(endpoint: str) -> str | None:
    """Why the Hub cannot be reached at all (its host name does not resolve), found in a fraction of a second;
    None when it may be reachable (a proxy is set, or the name resolves)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    host = urlparse(endpoint).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as exc:
        return f"{host} cannot be resolved ({exc.strerror or exc})"
    except OSError:
        return None
    return None


def _fail_fast_without_network(arch: str, tag: str, cache_dir: str | None) -> None:
    """Weights that are not cached, with no network: one line now, not after a minute of retries."""
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return  # open_clip fails at once from the cache; _load_error says so
    if _cached_weights(arch, tag, cache_dir):
        return
    reason = _unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if reason is not None:
        raise HubError(f"could not fetch {arch} weights {tag!r}: not in the local cache, and {reason}",
                       hint=OFFLINE_HINT)


def _load_error(arch: str, tag: str | None, exc: Exception) -> Exception:
    text = str(exc)
    if "Failed to download" in text or "HF Hub" in text or "offline" in text.lower():
        what = f"{arch} weights {tag!r}" if tag else arch
        return HubError(f"could not fetch {what}: not in the local cache and the Hub cannot be reached",
                        hint=OFFLINE_HINT)
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"could not load backbone {arch}: {text}")
    return UsageError(f"could not load backbone {arch}: {text}")
