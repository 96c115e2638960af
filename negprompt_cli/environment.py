"""What this installation runs on: versions, devices, cache locations, settings from the environment.

``negprompt env`` prints it so a bug report carries the facts that decide most GPU and install
problems (a CPU-only torch, a CUDA build older than the driver, bf16 on a GPU without it, weights
looked for in an unexpected cache, an offline switch left on). Nothing here touches the network or
loads a model.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# distributions whose versions decide behaviour (install names, as pip knows them)
PACKAGES = ("torch", "torchvision", "open_clip_torch", "huggingface_hub", "safetensors", "scikit-learn", "pluggy",
            "typer", "rich", "numpy", "pillow")
# settings read from the environment by negprompt, torch or huggingface_hub
ENV_PREFIXES = ("NEGPROMPT_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE", "CUDA_VISIBLE_DEVICES", "TORCH_HOME",
                "XDG_CACHE_HOME", "OMP_NUM_THREADS")
SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def default_cache_dir() -> Path:
    """``--cache-dir`` > ``NEGPROMPT_CACHE`` > ``$XDG_CACHE_HOME/negprompt`` > ``~/.cache/negprompt``."""
    env = os.environ.get("NEGPROMPT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "negprompt"


def hub_cache_from_environment() -> str | None:
    """The Hugging Face cache as the environment says *now* (huggingface_hub reads it once, at import); None for
    huggingface_hub's own default."""
    home = os.environ.get("HF_HOME")
    return os.environ.get("HF_HUB_CACHE") or (os.path.join(home, "hub") if home else None)


def offline_requested(flag: bool = False) -> bool:
    """``--offline``, or ``HF_HUB_OFFLINE`` set to anything but 0: nothing is fetched, caches only."""
    return flag or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_settings() -> dict[str, str]:
    """The relevant variables that are set; secrets are shown as set, never by value."""
    found = {}
    for name in sorted(os.environ):
        if name.startswith(ENV_PREFIXES):
            secret = any(marker in name.upper() for marker in SECRET_MARKERS)
            found[name] = "(set)" if secret else os.environ[name]
    return found


def cuda_devices() -> list[dict[str, Any]]:
    import torch

    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1),
                        # native bf16 from Ampere (8.0) on; torch.cuda.is_bf16_supported() also counts emulation
                        "bf16": props.major >= 8})
    return devices


def describe_environment() -> dict[str, Any]:
    import torch

    from . import __version__
    from .registry import get_host

    cuda_available = torch.cuda.is_available()
    try:
        from huggingface_hub import constants

        hub = {"cache": str(constants.HF_HUB_CACHE), "offline": bool(constants.HF_HUB_OFFLINE)}
    except ImportError:  # pragma: no cover - a declared dependency
        hub = {"cache": None, "offline": None}
    cache = default_cache_dir()
    return {
        "negprompt": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,  # None: a CPU-only build of torch
            "cuda_available": cuda_available,
            "cudnn": torch.backends.cudnn.version() if cuda_available else None,
            "devices": cuda_devices() if cuda_available else [],
            "cpu_threads": torch.get_num_threads(),
        },
        "feature_cache": {"path": str(cache), "exists": cache.is_dir()},
        "hub": hub,
        "environment": environment_settings(),
        # a third-party plugin that fails to load shows up here with its error
        "plugins": [{k: row[k] for k in ("name", "dist", "version", "error")} for row in get_host().describe()],
    }
