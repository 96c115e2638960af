"""negprompt: make a CLIP model say "I don't know" -- the Python API in one import.

    import negprompt

    detector = negprompt.Detector.from_prompts("neg.safetensors")
    rows = detector.score(["photo.jpg", pil_image])

    negprompt.fit_pos(negprompt.FitPosOptions(...)); negprompt.fit_neg(...); negprompt.score(...)

Every stage of the command line is here, with its options dataclass; errors are ``negprompt.NegPromptError``
(``.exit_code``, ``.hint``), notes ``negprompt.NegPromptWarning`` through :mod:`warnings`; nothing is printed.
The implementation lives in ``negprompt_cli`` (the command line's package); names are loaded on first use, so
``import negprompt`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from negprompt_cli import __version__, hookimpl

# public name -> (module in negprompt_cli, attribute)
_EXPORTS = {
    "Detector": ("detector", "Detector"),
    "fit_pos": ("stages.fit_pos", "fit_pos"), "FitPosOptions": ("stages.fit_pos", "FitPosOptions"),
    "fit_neg": ("stages.fit_neg", "fit_neg"), "FitNegOptions": ("stages.fit_neg", "FitNegOptions"),
    "transfer": ("stages.transfer", "transfer"),
    "score": ("stages.score", "score"), "ScoreOptions": ("stages.score", "ScoreOptions"),
    "report": ("stages.report", "build_report"), "ReportOptions": ("stages.report", "ReportOptions"),
    "DataOptions": ("training.data", "DataOptions"), "OptimConfig": ("presets", "OptimConfig"),
    "EncodeOptions": ("features.image_features", "EncodeOptions"),
    "CacheBuildOptions": ("stages.cache", "CacheBuildOptions"),
    "build_cache": ("stages.cache", "build"),
    "PromptSettings": ("training.learners", "PromptSettings"),
    "BackboneRequest": ("features.backbone", "BackboneRequest"),
    "RuntimeOptions": ("features.backbone", "RuntimeOptions"),
    "load_backbone": ("features.backbone", "load_backbone"),
    "load_prompts": ("outputs.artifact", "load_prompts"), "save_prompts": ("outputs.artifact", "save_prompts"),
    "PromptArtifact": ("outputs.artifact", "PromptArtifact"),
    "NegPromptError": ("errors", "NegPromptError"), "NegPromptWarning": ("errors", "NegPromptWarning"),
    "export_world": ("world", "export_world"), "world_spec": ("world", "default_spec"),
    "resolve_prompts": ("stages.hub", "resolve_prompts"), "pull": ("stages.hub", "pull"),
    "HubOptions": ("stages.hub", "HubOptions"),
}

__all__ = ["__version__", "hookimpl", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'negprompt' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(import_module(f"negprompt_cli.{module}"), attribute)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
