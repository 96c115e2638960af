"""Plugin manager: discovers plugins through the ``negprompt`` entry-point group.

Built-in plugins (``plugins/``, installed as ``negprompt_plugins``) are declared as entry points
of this very package, so they load through exactly the path a third-party plugin takes (a source
checkout must be installed, ``pip install -e .``; without its entry points a warning says so). Core
code never imports them.

Rules:

* ``NEGPROMPT_LOAD_PLUGINS=a,b`` loads only the entry points named ``a`` and ``b``;
  an empty value loads none (useful to debug a broken setup).
* A plugin that fails to import is skipped with a warning; it appears in
  ``negprompt plugins`` with its error.
* Load order: the built-ins first, then the other plugins in alphabetical order of their distribution's
  name (then of the entry point's name), whatever the order of installation or of ``sys.path``.
* Duplicate names: registering a name (or alias) that another plugin already registered is
  refused with a warning and the first registration is kept, unless the second passes
  ``replace=True``. Built-ins load first, so a third-party plugin must opt in to override one; of two
  third-party plugins, the one whose distribution sorts first keeps the name.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import inspect
import json
import os
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import NegPromptWarning, UsageError

ENTRY_POINT_GROUP = "negprompt"
BUILTIN_DIST = "negprompt"


class PluginWarning(NegPromptWarning):
    """A plugin could not be loaded or tried to take a name already in use."""


@dataclass
class PluginRecord:
    name: str
    dist: str | None = None
    version: str | None = None
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)


# A negative-label list a plugin names by address and digest instead of shipping it (``register_negative_lists``):
# a word list such as NegRefine's has its own author, licence and home, and negprompt carries no copy.
# ``scoring.negative_lists`` fetches the files into the cache when a run first names the list.
@dataclass(frozen=True)
class RemoteFile:
    """One file: the name it takes in the local folder, its address, and the SHA-256 of its bytes (hex)."""

    name: str
    url: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise TypeError(f"a remote file's name is a plain file name (got {self.name!r})")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise TypeError(f"{self.name}: sha256 must be 64 lower-case hex digits (got {self.sha256!r})")


@dataclass(frozen=True)
class RemoteFiles:
    """A set of files fetched together into one folder, with the terms they come under (shown by ``negprompt
    plugins`` and in the closing line of a run that fetches them)."""

    files: tuple[RemoteFile, ...]
    licence: str = ""
    source: str = ""  # where they come from, for people: a repository and commit

    def __post_init__(self) -> None:
        names = [f.name for f in self.files]
        if not names or len(set(names)) != len(names):
            raise TypeError("remote files need at least one file, each name once")

    def digest(self) -> str:
        """What names the cached folder: the files' names and digests, so a plugin that pins new files gets a new
        folder and an old copy is never read for them."""
        payload = json.dumps(sorted((f.name, f.sha256) for f in self.files))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer and what the core needs to know about it, stated by its plugin when it registers it
    (``register(name, fn, probability=True, pool="csp", ...)``), so no core module inspects the function."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    default_temperature: float = 1.0  # the τ (or T) it runs at unless the user or a stored threshold says
    probability: bool = False  # an ID probability in [0, 1]: it can run ``score --adaptive``
    needs_negative_prompts: bool = False  # needs a fit-neg artifact's negative prompts
    pool: str | None = None  # mines negative labels from this candidate pool (``scoring.negative_labels.POOLS``)
    trained_temperature: bool = False  # runs at the τ the artifact's negatives were trained with (Eq. 3)
    # takes ``logit_bias``: the backbone's learned bias b of a sigmoid-trained model (SigLIP; 0 for the others)
    logit_bias: bool = False
    # scores a stream, not a batch of cosines: registered as an object with ``start(StreamContext) -> ScoreStream``
    # (``scoring.test_time``); the core feeds it the image features in stream order
    test_time: bool = False
    # its labels are every candidate of ``pool`` (nothing mined) unless --mine-fraction / --negative-labels say
    whole_pool: bool = False
    # reads patch features: the core encodes (and caches) them and passes ``local``, cosines [B, P, C]
    local: bool = False
    # writes texts for each image from its best matches (NegRefine's "<class> and <label>"): the core passes
    # ``features`` (the images' unit features [B, E]) and ``texts`` (``scoring.composed_texts.ComposedTexts``:
    # the class and label names, and unit features of any text under the ID prompts' templates, each text
    # encoded once and kept, up to ``composed_texts.KEEP``); needs ``pool`` (the label names: the mined labels)
    composes_texts: bool = False


SCORER_PROPERTIES = ("default_temperature", "probability", "needs_negative_prompts", "pool",
                     "trained_temperature", "logit_bias", "test_time", "whole_pool", "local",
                     "composes_texts")
# plugins written against the first contract set these as attributes of the function instead
_LEGACY_ATTRIBUTES = {"probability": "probability_score"}


@dataclass
class Entry:
    name: str
    obj: Any
    plugin: str
    description: str = ""
    aliases: tuple[str, ...] = ()


class Registry:
    """Names -> registered objects of one kind (backbones, learners, scorers)."""

    def __init__(self, kind: str, normalise: Callable[[str], str] = str.lower) -> None:
        self.kind = kind
        self._normalise = normalise
        self._entries: dict[str, Entry] = {}
        self._lookup: dict[str, str] = {}
        self.limited_by: str | None = None  # NEGPROMPT_LOAD_PLUGINS, when it limits what was loaded

    def add(self, plugin: str, name: str, obj: Any, *, aliases=(), description="", replace=False) -> bool:
        keys = [name, *aliases]
        taken = [k for k in keys if self._normalise(k) in self._lookup]
        if taken and not replace:
            owner = self._entries[self._lookup[self._normalise(taken[0])]].plugin
            warnings.warn(
                f"plugin {plugin!r} registers {self.kind} {taken[0]!r}, already registered by "
                f"{owner!r}; keeping the one from {owner!r} (pass replace=True to override)",
                PluginWarning,
                stacklevel=3,
            )
            return False
        if taken and replace:
            for key in taken:
                old = self._lookup.pop(self._normalise(key))
                self._entries.pop(old, None)
        self._entries[name] = Entry(name, obj, plugin, description, tuple(aliases))
        for key in keys:
            self._lookup[self._normalise(key)] = name
        return True

    def get(self, name: str) -> Entry | None:
        key = self._lookup.get(self._normalise(name))
        return self._entries[key] if key is not None else None

    def names(self) -> list[str]:
        return list(self._entries)

    def all_spellings(self) -> list[str]:
        return [n for e in self._entries.values() for n in (e.name, *e.aliases)]

    def unknown(self, name: str, extra: str = "") -> UsageError:
        close = difflib.get_close_matches(name, self.all_spellings(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names()) or 'none'}"
        if self.limited_by is not None:
            extra += f" (NEGPROMPT_LOAD_PLUGINS={self.limited_by!r} loads only the plugins it names)"
            hint += "; unset NEGPROMPT_LOAD_PLUGINS to load every installed plugin"
        return UsageError(f"unknown {self.kind} {name!r}{extra}", hint=hint)


class PluginHost:
    """One loaded set of plugins and the registries they filled."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("negprompt")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.backbones = Registry("backbone", normalise=_normalise_backbone)
        self.learners = Registry("prompt learner")
        self.scorers = Registry("scorer")
        self.lexicons = Registry("lexicon")
        self.negative_lists = Registry("negative-label list")
        self.limited_by: str | None = None
        self._filled = False

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self, allow: set[str] | None) -> None:
        def dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
            dist = getattr(ep, "dist", None)
            return None if dist is None else str(dist.metadata["Name"])

        # built-ins first, then by distribution and entry-point name: the order decides which of two plugins
        # that register one name is kept, so it must not depend on sys.path or on the order of installation
        entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                              key=lambda ep: (dist_name(ep) != BUILTIN_DIST, (dist_name(ep) or "").lower(), ep.name))
        if allow is None and not any(dist_name(ep) == BUILTIN_DIST for ep in entry_points):
            warnings.warn("negprompt's built-in plugins (backbones, learners, scorers) are not installed: no "
                          f"{ENTRY_POINT_GROUP!r} entry points of the {BUILTIN_DIST!r} distribution were found "
                          "(in a source checkout, run: pip install -e .)", PluginWarning, stacklevel=2)
        if allow is not None:
            self.limited_by = os.environ.get("NEGPROMPT_LOAD_PLUGINS", ",".join(sorted(allow)))
            unknown = sorted(allow - {ep.name for ep in entry_points})
            if unknown:
                installed = ", ".join(sorted({ep.name for ep in entry_points})) or "none"
                warnings.warn(f"NEGPROMPT_LOAD_PLUGINS names {', '.join(map(repr, unknown))}, which no installed "
                              f"plugin is called (installed: {installed})", PluginWarning, stacklevel=2)
        for ep in entry_points:
            if (allow is not None and ep.name not in allow) or ep.name in self.records:
                continue
            dist = getattr(ep, "dist", None)
            self._load(ep.name, dist.metadata["Name"] if dist is not None else None,
                       dist.version if dist is not None else None, ep.load)

    def _load(self, name: str, dist: str | None, version: str | None, load: Callable[[], Any]) -> None:
        record = PluginRecord(name, dist=dist, version=version)
        self.records[name] = record
        try:
            self.pm.register(load(), name=name)
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            record.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"could not load plugin {name!r}: {record.error}", PluginWarning, stacklevel=3)
            return
        self._check_hooks(name)

    def register_object(self, plugin: object, name: str) -> None:
        """Register an in-process plugin (tests, notebooks) and refill the registries."""
        self.pm.register(plugin, name=name)
        self.records[name] = PluginRecord(name)
        self._check_hooks(name)
        self._filled = False

    def _check_hooks(self, name: str) -> None:
        """A plugin implementing a hook that does not exist (``register_scorer`` for ``register_scorers``) is
        skipped with one warning naming it and the hook it meant; the other plugins and the CLI keep working
        (pluggy would otherwise fail every command at the first registry lookup)."""
        plugin = self.pm.get_plugin(name)
        known = sorted(n for n in dir(hookspecs) if n.startswith(("register_", "resolve_")))
        unknown = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [] if caller.spec is None)
        if not unknown:
            return
        self.pm.unregister(name=name)
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
        record = self.records[name]
        record.error = (f"implements {unknown[0]!r}, which is not a negprompt hook"
                        + (f" (did you mean {close[0]!r}?)" if close else f" (hooks: {', '.join(known)})"))
        warnings.warn(f"skipped plugin {name!r}: it {record.error}", PluginWarning, stacklevel=4)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.records.pop(name, None)
        self._filled = False

    def fill(self) -> None:
        """Ask every plugin to register into fresh registries (idempotent until plugins change)."""
        if self._filled:
            return
        self.pm.check_pending()
        self.backbones = Registry("backbone", normalise=_normalise_backbone)
        self.learners = Registry("prompt learner")
        self.scorers = Registry("scorer")
        self.lexicons = Registry("lexicon")
        self.negative_lists = Registry("negative-label list")
        for registry in self._registries():
            registry.limited_by = self.limited_by
        for record in self.records.values():
            record.registered = {}
        # pluggy calls hookimpls LIFO; get_hookimpls() lists them in registration order, so we
        # call them in that order and "first registration wins" means "built-ins win".
        for hook_name, registry in (
            ("register_backbones", self.backbones),
            ("register_prompt_learners", self.learners),
            ("register_scorers", self.scorers),
            ("register_lexicons", self.lexicons),
            ("register_negative_lists", self.negative_lists),
        ):
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                register = self._registrar(impl.plugin_name, registry)
                impl.function(**({"register": register} if impl.argnames else {}))
        self._filled = True

    def _registrar(self, plugin_name: str, registry: Registry) -> Callable[..., None]:
        def register(name: str, obj: Any, *, aliases=(), description: str = "", replace: bool = False,
                     **properties: Any) -> None:
            try:
                if registry is self.scorers:
                    obj = _scorer_spec(plugin_name, name, obj, description, properties)
                elif registry is self.lexicons:
                    obj = _lexicon_path(plugin_name, name, obj, properties)
                elif registry is self.negative_lists:
                    obj = _negative_list_source(plugin_name, name, obj, properties)
                elif properties:
                    raise TypeError(f"plugin {plugin_name!r} registers {registry.kind} {name!r} with unknown "
                                    f"keyword(s) {', '.join(sorted(properties))}")
            except TypeError as exc:  # a plugin's mistake costs its registration, not the command
                warnings.warn(f"{exc}; not registered", PluginWarning, stacklevel=2)
                return
            if registry.add(plugin_name, name, obj, aliases=tuple(aliases), description=description,
                            replace=replace):
                record = self.records.setdefault(plugin_name, PluginRecord(plugin_name))
                record.registered.setdefault(registry.kind, []).append(name)

        return register

    # -- lookups ---------------------------------------------------------------------------
    def backbone_factory(self, name: str) -> Callable[..., Any]:
        """The ``BackboneFactory`` for ``name``: a registered name (or alias) first, else the first plugin whose
        ``resolve_backbone`` answers."""
        self.fill()
        entry = self.backbones.get(name)
        if entry is not None:
            return entry.obj
        factory = self.pm.hook.resolve_backbone(name=name)
        if factory is not None:
            return factory
        raise self.backbones.unknown(name)

    def learner(self, name: str) -> Any:
        return self._lookup("learners", name)

    def scorer(self, name: str) -> Callable[..., Any]:
        """The scoring function registered as ``name``."""
        return self.scorer_spec(name).fn

    def scorer_spec(self, name: str) -> ScorerSpec:
        """The scorer registered as ``name`` with its properties (:class:`ScorerSpec`)."""
        spec: ScorerSpec = self._lookup("scorers", name)
        return spec

    def lexicon(self, name: str) -> Path:
        """The folder or file registered as lexicon ``name`` (``--lexicon NAME``)."""
        path: Path = self._lookup("lexicons", name)
        return path

    def negative_list(self, name: str) -> Path | RemoteFiles:
        """What is registered as negative-label list ``name`` (``--negatives NAME``): a local folder or file, or
        files to fetch (:mod:`negprompt_cli.scoring.negative_lists`)."""
        source: Path | RemoteFiles = self._lookup("negative_lists", name)
        return source

    def scorer_specs(self) -> list[ScorerSpec]:
        self.fill()
        return [self.scorers.get(n).obj for n in self.scorers.names()]  # type: ignore[union-attr]

    def _registries(self) -> tuple[Registry, ...]:
        return self.backbones, self.learners, self.scorers, self.lexicons, self.negative_lists

    def _lookup(self, attribute: str, name: str) -> Any:
        self.fill()  # fill() builds fresh registries, so look the attribute up after it
        registry: Registry = getattr(self, attribute)
        entry = registry.get(name)
        if entry is None:
            raise registry.unknown(name)
        return entry.obj

    def describe(self) -> list[dict[str, Any]]:
        self.fill()
        out = []
        for record in self.records.values():
            plugin = self.pm.get_plugin(record.name)
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or []) if plugin else []
            out.append(
                {
                    "name": record.name,
                    "dist": record.dist,
                    "version": record.version,
                    "hooks": hooks,
                    "registers": record.registered,
                    "entries": self._entries_of(record.name),
                    "error": record.error,
                }
            )
        return out

    def _entries_of(self, plugin: str) -> dict[str, list[dict[str, Any]]]:
        """What a plugin registered, entry by entry: name, aliases, the description it gave, and for a learner
        its own options (what ``--learner-option KEY=VALUE`` takes: name, type, default)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for registry in self._registries():
            for entry in registry._entries.values():
                if entry.plugin != plugin:
                    continue
                row: dict[str, Any] = {"name": entry.name, "aliases": list(entry.aliases),
                                       "description": entry.description}
                owner = entry.obj if registry is self.learners else getattr(entry.obj, "fn", None)
                options = option_fields(owner) if registry in (self.learners, self.scorers) else []
                if registry is self.learners or options:  # a learner always says; a scorer when it has some
                    row["options"] = options
                if isinstance(entry.obj, RemoteFiles):  # where a fetched list comes from, and on what terms
                    row["fetched"] = {"source": entry.obj.source, "licence": entry.obj.licence,
                                      "files": [{"name": f.name, "url": f.url, "sha256": f.sha256}
                                                for f in entry.obj.files]}
                found.setdefault(registry.kind, []).append(row)
        return found


def option_fields(owner: Any) -> list[dict[str, Any]]:
    """A learner's (or a scorer's) ``Options`` dataclass as rows: name, type (as written), default (None where it
    has none)."""
    import dataclasses

    options = getattr(owner, "Options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return []
    rows = []
    for f in dataclasses.fields(options):
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        rows.append({"name": f.name, "type": kind, "default": default})
    return rows


def _scorer_spec(plugin: str, name: str, fn: Any, description: str, properties: dict[str, Any]) -> ScorerSpec:
    unknown = sorted(set(properties) - set(SCORER_PROPERTIES))
    if unknown:
        raise TypeError(f"plugin {plugin!r} registers scorer {name!r} with unknown properties {', '.join(unknown)} "
                        f"(a scorer takes {', '.join(SCORER_PROPERTIES)})")
    if isinstance(fn, ScorerSpec):
        return fn
    stated = {}
    for key in SCORER_PROPERTIES:
        if properties.get(key) is not None:
            stated[key] = properties[key]
        elif hasattr(fn, _LEGACY_ATTRIBUTES.get(key, key)):  # the first contract: attributes on the function
            stated[key] = getattr(fn, _LEGACY_ATTRIBUTES.get(key, key))
    spec = ScorerSpec(name=name, fn=fn, description=description, **stated)
    if spec.composes_texts and spec.pool is None:
        raise TypeError(f"plugin {plugin!r} registers scorer {name!r} with composes_texts and no pool: the texts it "
                        "writes name mined labels (docs/plugins.md)")
    _check_scorer_signature(plugin, spec)
    return spec


def _negative_list_source(plugin: str, name: str, source: Any, properties: dict[str, Any]) -> Path | RemoteFiles:
    """A registered list is files to fetch, or (as a lexicon) a path that exists."""
    if isinstance(source, RemoteFiles):
        if properties:
            raise TypeError(f"plugin {plugin!r} registers negative-label list {name!r} with unknown keyword(s) "
                            f"{', '.join(sorted(properties))}")
        return source
    return _lexicon_path(plugin, name, source, properties, kind="negative-label list")


def _lexicon_path(plugin: str, name: str, path: Any, properties: dict[str, Any], kind: str = "lexicon") -> Path:
    """A registered lexicon is a path that exists (a plugin's data files missing from its install is its
    mistake, said once when it loads, not when a run mines)."""
    if properties:
        raise TypeError(f"plugin {plugin!r} registers {kind} {name!r} with unknown keyword(s) "
                        f"{', '.join(sorted(properties))}")
    if not isinstance(path, (str, os.PathLike)) or not Path(path).exists():
        raise TypeError(f"plugin {plugin!r} registers {kind} {name!r} at {path!r}, which does not exist")
    return Path(path)


def _check_scorer_signature(plugin: str, spec: ScorerSpec) -> None:
    """A scorer that cannot take the arguments the core passes is refused when it registers (one warning naming
    the plugin and the call), not when the first image is scored. Callables without a readable signature are
    checked when they are called."""
    if spec.test_time:  # never called per batch: it must open streams
        if not callable(getattr(spec.fn, "start", None)):
            raise TypeError(f"plugin {plugin!r} registers test-time scorer {spec.name!r} without a start(context) "
                            "method (docs/plugins.md)")
        return
    try:
        signature = inspect.signature(spec.fn)
    except (TypeError, ValueError):
        return
    keywords: dict[str, Any] = {"temperature": 1.0, "logit_scale": 100.0}
    if spec.pool is not None:  # a mined-label scorer also gets the labels' cosines and the grouping
        keywords |= {"mined": None, "groups": 1, "seed": 0}
    if spec.logit_bias:  # a scorer for sigmoid-trained models also gets the backbone's bias
        keywords |= {"logit_bias": 0.0}
    if spec.local:  # a scorer of patch features gets their cosines to the class prompts
        keywords |= {"local": None}
    if spec.composes_texts:  # a scorer that writes texts per image gets the images' features and the encoder
        keywords |= {"features": None, "texts": None}
    try:
        signature.bind(None, None, **keywords)
    except TypeError as exc:
        raise TypeError(f"plugin {plugin!r} registers scorer {spec.name!r}, which cannot be called as "
                        f"scorer(pos, neg, *, {', '.join(keywords)}) ({exc}; docs/plugins.md)") from None


def _normalise_backbone(name: str) -> str:
    """ViT-B/16, vit-b-16 and ViT-B-16 are the same backbone."""
    return name.strip().replace("/", "-").lower()


def allow_list_from_env() -> set[str] | None:
    value = os.environ.get("NEGPROMPT_LOAD_PLUGINS")
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loading entry points on first use."""
    global _host
    if _host is None:
        host = PluginHost()
        host.load_entry_points(allow_list_from_env())
        _host = host
    return _host


def reset_host() -> None:
    """Forget loaded plugins (tests; changes to NEGPROMPT_LOAD_PLUGINS)."""
    global _host
    _host = None


# -- a plugin's own settings (a learner's --learner-option, a scorer's --scorer-option) ----------------------------
# KEY=VALUE texts checked against the ``Options`` dataclass the plugin declares, as simonw/llm checks ``-o KEY VALUE``
# against a model's Options: one rule for every kind of plugin.

def plugin_options(kind: str, name: str, owner: Any, given: dict[str, Any]) -> Any:
    """``owner.Options`` (a learner's or a scorer's own settings dataclass) filled with ``given``: unknown names
    and bad values are usage errors naming the plugin; a value given as text (``KEY=VALUE``) is converted to
    the field's declared type (int, float, bool, str, or any of them ``| None``)."""
    options_type = getattr(owner, "Options", None)
    if options_type is None:
        if given:
            raise UsageError(f"{kind} {name!r} takes no options (got {', '.join(sorted(given))})")
        return None
    known = {f.name for f in fields(options_type)}
    unknown = sorted(set(given) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise UsageError(f"{kind} {name!r} has no option {unknown[0]!r}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""),
                         hint=f"its options: {', '.join(sorted(known))}")
    try:
        hints = typing.get_type_hints(options_type)
    except Exception:  # annotations this module cannot resolve: the values go to the plugin as text
        hints = {}
    values = {k: _from_text(kind, name, k, v, hints.get(k)) if isinstance(v, str) else v for k, v in given.items()}
    try:
        return options_type(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{kind} {name!r}: {exc}") from None
    except UsageError as exc:  # the plugin's own check (__post_init__): said with the plugin's name
        raise UsageError(f"{kind} {name!r}: {exc.message}", hint=exc.hint) from None


def parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` texts (``flag``, repeatable) -> {KEY: VALUE}; the plugin's Options convert the values."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"{flag} takes KEY=VALUE (got {pair!r})",
                             hint=f"e.g. {flag} KEY=VALUE; negprompt plugins lists each plugin's options")
        if key in options:
            raise UsageError(f"{flag} {key} is given twice")
        options[key] = value
    return options


def _from_text(kind: str, name: str, key: str, text: str, hint: Any) -> Any:
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_args(hint) else [hint]
    optional = type(None) in typing.get_args(hint)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    wanted = kinds[0] if len(kinds) == 1 else str
    try:
        if wanted is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes", "on")
        if wanted in (int, float, str):
            return wanted(text)
    except ValueError:
        raise UsageError(f"{kind} {name!r} option {key} takes {getattr(wanted, '__name__', wanted)} "
                         f"(got {text!r})") from None
    return text  # a type the command line cannot spell: the plugin checks it
