"""What ``--negatives`` names: a list file or folder, or a registered list's name (``register_negative_lists``).

A list registered as :class:`~negprompt_cli.registry.RemoteFiles` is fetched the first time a run names it,
into ``<cache>/lists/<digest>/`` (the feature cache's folder, ``--cache-dir``): each file is downloaded to a
temporary file, checked against its pinned SHA-256 and only then renamed into place, so a cut download or a file
changed where it is published never becomes a list. Later runs, and offline runs, read that copy, checked again
(a few hundred kilobytes). Plain ``urllib`` with a timeout, not the Hub client: raw files at a fixed address.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from ..errors import HubError, NegPromptNotice, UsageError
from ..features.feature_cache import LISTS_DIR
from ..outputs.atomic import atomic_path
from ..registry import RemoteFile, RemoteFiles, get_host
from .lexicon import is_registered_name

TIMEOUT_S = 60.0
CHUNK = 1 << 16
MAX_BYTES = 64 << 20  # a word list is kilobytes; an address that streams more is not the file it names


def negatives_path(value: Path, cache_dir: Path, *, offline: bool = False) -> Path:
    """The file or folder ``--negatives`` reads: ``value`` itself when it exists (a path always wins), else the
    list registered under that name (its cached copy for a remote one, fetched first when missing)."""
    if Path(value).exists() or not is_registered_name(str(value)):
        return Path(value)
    name = str(value)
    source = get_host().negative_list(name)  # an unknown name: one error with the close ones
    if isinstance(source, Path):
        return source
    folder, fetched = fetch(source, cache_dir, offline=offline, what=f"negative-label list {name!r}")
    if fetched:
        terms = "; ".join(t for t in (source.source, source.licence) if t)
        warnings.warn(f"fetched negative-label list {name!r} into {folder}" + (f" ({terms})" if terms else ""),
                      NegPromptNotice, stacklevel=2)
    return folder


def cached_folder(remote: RemoteFiles, cache_dir: Path) -> Path:
    return Path(cache_dir) / LISTS_DIR / remote.digest()


def fetch(remote: RemoteFiles, cache_dir: Path, *, offline: bool, what: str) -> tuple[Path, list[str]]:
    """(the local folder holding every file of ``remote``, the names downloaded by this call). A cached file whose
    bytes no longer match its digest is fetched again. ``what`` names the list in errors."""
    folder = cached_folder(remote, cache_dir)
    missing = [f for f in remote.files if _digest_of(folder / f.name) != f.sha256]
    if missing and offline:
        raise HubError(f"{what} is not in the cache ({folder}) and negprompt is offline",
                       hint="run once with the network (without --offline / HF_HUB_OFFLINE) to fetch it")
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {folder} to keep {what}: {exc.strerror or exc}",
                             hint="choose another --cache-dir") from None
    for file in missing:
        with atomic_path(folder / file.name) as tmp:
            _download(file, tmp, what)
    return folder, [f.name for f in missing]


def _digest_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _download(file: RemoteFile, target: Path, what: str) -> None:
    """``file``'s bytes into ``target``, checked against its digest; one :class:`HubError` for any failure."""
    digest = hashlib.sha256()
    size = 0
    try:
        request = urllib.request.Request(file.url, headers={"User-Agent": "negprompt"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(target, "wb") as out:
            announced = response.headers.get("Content-Length")
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise HubError(f"{what}: {file.url} sent more than {MAX_BYTES >> 20} MiB, not the file it names")
                digest.update(chunk)
                out.write(chunk)
        if announced is not None and announced.isdigit() and size < int(announced):
            raise ConnectionError(f"the connection closed after {size:,} of {int(announced):,} bytes")
    except urllib.error.HTTPError as exc:
        raise HubError(f"{what}: {file.url} answered HTTP {exc.code} ({exc.reason})") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HubError(f"{what}: cannot fetch {file.url} ({reason})",
                       hint="check the network, or use a local copy: --negatives FOLDER") from None
    if digest.hexdigest() != file.sha256:
        raise HubError(f"{what}: {file.name} from {file.url} does not match its pinned SHA-256 (got "
                       f"{digest.hexdigest()[:16]}…, expected {file.sha256[:16]}…); nothing was kept",
                       hint="the file changed where it is published; a local copy works: --negatives FOLDER")
