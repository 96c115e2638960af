"""Plugin discovery through real entry points, the allow-list, broken plugins and duplicate names."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from conftest import invoke

import negprompt_cli
from negprompt_cli import registry
from negprompt_cli.presets import default_scorer
from negprompt_cli.registry import PluginHost, PluginWarning


def install_fake_plugin(site: Path, module: str, source: str, ep_name: str | None = None,
                        dist: str = "negprompt-fake", version: str = "0.1") -> None:
    """A plugin 'installed' the way pip would: a dist-info with entry_points.txt on sys.path."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[negprompt]\n{ep_name or module} = {module}\n")


FAKE = """
    import negprompt_cli

    @negprompt_cli.hookimpl
    def register_scorers(register):
        register("always-one", lambda pos, neg=None, **kw: pos[:, 0] * 0 + 1, description="test scorer")

    @negprompt_cli.hookimpl
    def register_backbones(register):
        register("fake-clip", lambda **kw: None, aliases=("fake/clip",))
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_fake_plugin(site, "negprompt_fake", FAKE)
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("negprompt_fake", None)


def test_builtins_load_through_entry_points():
    host = registry.get_host()
    names = {r["name"]: r for r in host.describe()}
    assert {"openclip", "coop", "scorers"} <= set(names)
    assert names["openclip"]["dist"] == "negprompt"
    assert set(host.scorers.names()) >= {"negprompt", "mcm", "energy", "maxlogit", "msp"}
    assert "ViT-B/16" in host.backbones.names()
    # both spellings reach the same backbone
    assert host.backbones.get("ViT-B-16").name == "ViT-B/16"


def test_third_party_plugin_is_discovered(fake_site):
    host = registry.get_host()
    record = next(r for r in host.describe() if r["name"] == "negprompt_fake")
    assert record["dist"] == "negprompt-fake" and record["version"] == "0.1"
    assert record["registers"] == {"scorer": ["always-one"], "backbone": ["fake-clip"]}
    assert host.backbones.get("fake/clip").name == "fake-clip"


def test_plugins_command_json(fake_site):
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    fake = next(r for r in rows if r["name"] == "negprompt_fake")
    assert fake["hooks"] == ["register_backbones", "register_scorers"]
    listing = invoke(["plugins"])  # on stdout (its data); names whole at any width
    assert listing.exit_code == 0 and listing.stderr == ""
    assert "negprompt_fake" in listing.stdout and "…" not in listing.stdout
    scorers = listing.stdout.split("scorers 0.1.0\n  scorer:\n")[1]
    for name in ("negprompt", "mcm", "energy", "maxlogit", "msp", "neglabel", "csp", "negprompt-sum",
                 "negprompt-maxlogit"):  # one line each, the name whole, its description beside it
        assert f"\n    {name}: " in "\n" + scorers, name


def test_allow_list_limits_loading(fake_site, monkeypatch):
    monkeypatch.setenv("NEGPROMPT_LOAD_PLUGINS", "negprompt_fake")
    registry.reset_host()
    assert [r["name"] for r in registry.get_host().describe()] == ["negprompt_fake"]
    monkeypatch.setenv("NEGPROMPT_LOAD_PLUGINS", "")
    registry.reset_host()
    assert registry.get_host().describe() == []


def test_an_allow_list_naming_no_installed_plugin_is_said(monkeypatch, tmp_path):
    """#30 item 8: NEGPROMPT_LOAD_PLUGINS=nonexistent used to end in "unknown backbone 'toy'" alone."""
    monkeypatch.setenv("NEGPROMPT_LOAD_PLUGINS", "nonexistent,coop")
    registry.reset_host()
    with pytest.warns(registry.PluginWarning, match=r"NEGPROMPT_LOAD_PLUGINS names 'nonexistent', which no "
                                                    r"installed plugin is called \(installed: .*openclip"):
        registry.get_host()
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "x.png")
    registry.reset_host()
    result = invoke(["score", str(tmp_path / "images"), "--zero-shot", "--names", str(names), "--backbone", "toy"])
    assert result.exit_code == 2
    assert "Warning: NEGPROMPT_LOAD_PLUGINS names 'nonexistent'" in result.stderr
    error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert "unknown backbone 'toy'" in error and "NEGPROMPT_LOAD_PLUGINS='nonexistent,coop'" in error
    assert "unset NEGPROMPT_LOAD_PLUGINS" in result.stderr
    registry.reset_host()


def test_broken_plugin_warns_and_cli_still_works(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_fake_plugin(site, "negprompt_broken", "raise ImportError('missing dependency xyz')",
                        dist="negprompt-broken")
    monkeypatch.syspath_prepend(str(site))
    with pytest.warns(PluginWarning, match="missing dependency xyz"):
        host = registry.get_host()
    broken = next(r for r in host.describe() if r["name"] == "negprompt_broken")
    assert "missing dependency xyz" in broken["error"]
    assert "coop" in host.learners.names()
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0


def test_an_installed_plugin_with_a_misspelt_hook_leaves_the_cli_working(tmp_path, monkeypatch):
    site = tmp_path / "site"
    install_fake_plugin(site, "negprompt_typo", """
        import negprompt_cli

        @negprompt_cli.hookimpl
        def register_scorer(register):
            pass
    """, dist="negprompt-typo")
    monkeypatch.syspath_prepend(str(site))
    registry.reset_host()
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.stderr
    row = next(r for r in json.loads(result.stdout) if r["name"] == "negprompt_typo")
    assert "did you mean 'register_scorers'" in row["error"]
    assert "Warning: skipped plugin 'negprompt_typo'" in result.stderr and "unexpected" not in result.stderr
    sys.modules.pop("negprompt_typo", None)
    registry.reset_host()


def test_duplicate_name_keeps_first_unless_replace():
    class Dup:
        @negprompt_cli.hookimpl
        def register_scorers(self, register):
            register("mcm", "imposter")

    class Replacer:
        @negprompt_cli.hookimpl
        def register_scorers(self, register):
            register("energy", "replacement", replace=True)

    host = registry.get_host()
    host.register_object(Dup(), "dup")
    with pytest.warns(PluginWarning, match="already registered by 'scorers'"):
        host.fill()
    assert host.scorer("mcm") != "imposter"
    host.register_object(Replacer(), "replacer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        host.fill()
    assert host.scorer("energy") == "replacement"


@pytest.mark.parametrize("first_on_path", ["zeta", "alpha"])
def test_two_installed_plugins_with_one_name_resolve_by_distribution_name(tmp_path, monkeypatch, first_on_path):
    """Whatever the order of sys.path (the order of installation), the distribution that sorts first keeps the
    name, and the warning names both."""
    for dist in ("alpha", "zeta"):
        install_fake_plugin(tmp_path / dist, f"negprompt_dup_{dist}", f"""
            from negprompt.plugin import hookimpl

            @hookimpl
            def register_scorers(register):
                register("dup-score", lambda pos, neg=None, **kw: pos[:, 0], description="from {dist}")
        """, ep_name=f"dup-{dist}", dist=f"negprompt-{dist}")
    for dist in (("alpha", "zeta") if first_on_path == "zeta" else ("zeta", "alpha")):
        monkeypatch.syspath_prepend(str(tmp_path / dist))  # the last prepended is first on sys.path
    registry.reset_host()
    try:
        with pytest.warns(PluginWarning) as caught:
            host = registry.get_host()
            host.fill()
        said = [str(w.message) for w in caught if "dup-score" in str(w.message)]
        assert said == ["plugin 'dup-zeta' registers scorer 'dup-score', already registered by 'dup-alpha'; keeping "
                        "the one from 'dup-alpha' (pass replace=True to override)"]
        assert host.scorers.get("dup-score").description == "from alpha"
    finally:
        for dist in ("alpha", "zeta"):
            sys.modules.pop(f"negprompt_dup_{dist}", None)
        registry.reset_host()


def test_a_misspelt_hook_skips_that_plugin_with_one_warning_and_the_rest_works():
    """#40 item 3: `register_scorer` (no "s") made every command fail with "unexpected PluginValidationError"."""
    class Typo:
        @negprompt_cli.hookimpl
        def register_scorer(self, register):  # missing 's'
            register("never", lambda pos, neg=None, **kw: pos.max(1).values)

    host = PluginHost()
    host.load_entry_points(None)
    with pytest.warns(registry.PluginWarning, match=r"skipped plugin 'typo': it implements 'register_scorer', "
                                                    r"which is not a negprompt hook \(did you mean "
                                                    r"'register_scorers'\?\)"):
        host.register_object(Typo(), "typo")
    host.fill()  # no PluginValidationError: the plugin is out
    assert host.scorers.get("mcm") is not None and host.scorers.get("never") is None
    assert host.records["typo"].error.startswith("implements 'register_scorer'")


def test_unknown_names_suggest_close_matches():
    from negprompt_cli.errors import UsageError

    host = registry.get_host()
    with pytest.raises(UsageError) as info:
        host.scorer("mcn")
    assert "mcm" in info.value.hint
    with pytest.raises(UsageError) as info:
        host.backbone_factory("ViT-B/61")
    assert "ViT-B/16" in info.value.hint


def test_docs_plugin_example_works(tmp_path, monkeypatch):
    """docs/plugins.md's scorer example (docs/examples/), installed as a plugin, registers and scores."""
    import torch

    source = (Path(__file__).parents[1] / "docs" / "examples" / "negprompt-margin" / "negprompt_margin.py").read_text()
    site = tmp_path / "site"
    install_fake_plugin(site, "negprompt_margin", source, ep_name="margin", dist="negprompt-margin")
    monkeypatch.syspath_prepend(str(site))
    try:
        scorer = registry.get_host().scorer("margin")
        pos = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.19, 0.0]])
        assert torch.allclose(scorer(pos, None), torch.tensor([0.2, 0.01]))
    finally:
        sys.modules.pop("negprompt_margin", None)


def test_builtins_install_under_their_own_name_as_entry_points():
    """The built-ins are `negprompt_plugins.*` (not a generic top-level `plugins`), loaded through the entry points
    pyproject.toml declares, as a third-party plugin is."""
    import importlib.metadata
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["negprompt"]
    assert declared == {"openclip": "negprompt_plugins.openclip_backbones", "coop": "negprompt_plugins.coop_learner",
                        "negprompt_learner": "negprompt_plugins.negprompt_learner",
                        "scorers": "negprompt_plugins.scorers", "tanl": "negprompt_plugins.tanl_scorer",
                        "locoop": "negprompt_plugins.locoop_learner", "lexicons": "negprompt_plugins.lexicons"}
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="negprompt")
                 if ep.dist is not None and ep.dist.metadata["Name"] == "negprompt"}
    assert installed == declared


def test_an_uninstalled_checkout_says_the_builtins_are_missing(monkeypatch):
    """No entry points at all (a source checkout nobody installed): one warning naming the fix, not a silent
    "unknown backbone" later."""
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    host = PluginHost()
    with pytest.warns(registry.PluginWarning, match=r"built-in plugins .* are not installed.*pip install -e \."):
        host.load_entry_points(None)
    assert host.records == {}


THIRD_PARTY_LEARNER = """
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F

    import negprompt_cli
    from negprompt_cli.training.learners import PromptModule


    @dataclass(frozen=True)
    class AwayOptions:
        n_neg: int = 1
        margin: float = 0.0


    class AwayPrompts(PromptModule):
        \"\"\"Negatives pushed away from the ID images of their class (a deliberately small learner).\"\"\"

        def __init__(self, encoder, prompts, settings, generator, *, ctx_pos, options):
            super().__init__()
            self.encoder, self.prompts, self.options = encoder, prompts, options
            self.prompts_per_class = options.n_neg
            device = encoder.model.token_embedding.weight.device
            self.register_buffer("ctx_pos", ctx_pos.to(device))
            with torch.no_grad():
                self.register_buffer("text_pos", encoder.encode_shared(self.ctx_pos, prompts)[0])
            noise = torch.rand((options.n_neg, *ctx_pos.shape), generator=generator) * 1e-3
            self.ctx_neg = torch.nn.Parameter(self.ctx_pos.unsqueeze(0) + noise.to(device))

        def negatives(self):
            return self.encoder.encode_shared(self.ctx_neg, self.prompts, chunk_size=self.text_chunk).transpose(0, 1)

        def class_logits(self, image_features):
            return 100 * image_features.float() @ self.text_pos.float().t()

        def loss(self, image_features, labels):
            neg = self.negatives()[labels]  # [B, P, E]
            closeness = (neg * image_features.float().unsqueeze(1)).sum(-1)
            return F.relu(closeness - self.options.margin).mean(), self.class_logits(image_features)

        def export(self):
            return {"ctx_pos": self.ctx_pos, "ctx_neg": self.ctx_neg, "text_pos": self.text_pos,
                    "text_neg": self.negatives()}

        def artifact_prompt(self):
            return {"n_neg": self.options.n_neg}


    class AwayLearner:
        kind = "negative"
        Options = AwayOptions

        def __call__(self, encoder, prompts, settings, generator, *, ctx_pos, options):
            return AwayPrompts(encoder, prompts, settings, generator, ctx_pos=ctx_pos, options=options)


    @negprompt_cli.hookimpl
    def register_prompt_learners(register):
        register("away", AwayLearner(), description="third-party negative learner with its own options")
"""


def test_a_third_party_negative_learner_with_its_own_options(tmp_path, monkeypatch, tiny_vit_dir):
    """Through the contract alone (learners.py): its Options are filled, checked and recorded; its prompt entries
    reach the artifact; the stored threshold, transfer and score work on what it exports."""
    from conftest import make_image_folder

    from negprompt_cli.outputs.artifact import load_prompts

    install_fake_plugin(tmp_path / "site", "negprompt_away", THIRD_PARTY_LEARNER, ep_name="away")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.reset_host()
    data = make_image_folder(tmp_path / "train", classes=("red_stripes", "green_bars"), per_class=6)
    pos = tmp_path / "pos.safetensors"
    common = ["--data", str(data), "--backbone", f"local-dir:{tiny_vit_dir}"]
    assert invoke(["fit-pos", *common, "--out", str(pos), "--epochs", "2", "--n-ctx", "4"]).exit_code == 0
    out = tmp_path / "away.safetensors"
    result = invoke(["fit-neg", "--data", str(data), "--pos", str(pos), "--out", str(out), "--learner",
                                 "away", "--n-neg", "3", "--learner-option", "margin=0.25", "--epochs", "2", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # its own option, set from the command line, typed by its Options
    assert summary["learner"] == "away" and summary["learner_options"] == {"n_neg": 3, "margin": 0.25}
    artifact = load_prompts(out, kind="negative")
    assert artifact.training["learner_options"] == {"n_neg": 3, "margin": 0.25}
    assert artifact.prompt["n_neg"] == 3 and artifact.tensors["text_neg"].shape == (2, 3, 32)
    assert artifact.extra["threshold"]["scorer"] == default_scorer(True, backbone="local-dir:x")  # score's default
    scored = invoke(["score", str(data), "--prompts", str(out), "--format", "jsonl"])
    assert scored.exit_code == 0, scored.stderr
    assert all(json.loads(line)["ood"] is not None for line in scored.stdout.splitlines())
    # NegPrompt's own options are not this learner's: one line, exit 2, before any training
    wrong = invoke(["fit-neg", "--data", str(data), "--pos", str(pos), "--out", str(tmp_path / "x.st"),
                                "--learner", "away", "--beta", "0.3"])
    assert wrong.exit_code == 2 and "learner 'away' has no option 'beta'" in wrong.stderr
    assert "its options: margin, n_neg" in wrong.stderr
    # --learner-option is checked against the learner's Options before any work: one line, exit 2, no file
    base = ["fit-neg", "--data", str(data), "--pos", str(pos), "--out", str(tmp_path / "x.st"), "--learner", "away"]
    for args, message in (
            (["--learner-option", "margn=1"], "Error: learner 'away' has no option 'margn' (did you mean 'margin'?)"),
            (["--learner-option", "margin=wide"], "Error: learner 'away' option margin takes float (got 'wide')"),
            (["--learner-option", "n_neg"], "Error: --learner-option takes KEY=VALUE (got 'n_neg')"),
            (["--learner-option", "n_neg=2", "--learner-option", "n-neg=3"], "Error: --learner-option n_neg is "
                                                                              "given twice"),
            (["--n-neg", "2", "--learner-option", "n_neg=3"], "Error: --n-neg and --learner-option n_neg=... are "
                                                              "both given")):
        bad = invoke([*base, *args])
        assert bad.exit_code == 2 and bad.stderr.splitlines()[0] == message, (args, bad.stderr)
    assert not (tmp_path / "x.st").exists()


def test_the_documented_backbone_plugin_scores_and_trains(tmp_path, monkeypatch):
    """docs/plugins.md's backbone example, installed as a real plugin: zero-shot score and fit-pos run on it, and
    both precedence rules hold (registered names first; a later plugin's resolver is asked before the built-in)."""
    from conftest import make_image_folder

    import negprompt_cli

    source = (Path(__file__).parents[1] / "docs" / "examples" / "negprompt-tiny" / "negprompt_tiny.py").read_text()
    install_fake_plugin(tmp_path / "site", "negprompt_tiny", source, ep_name="tiny", dist="negprompt-tiny")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.reset_host()
    try:
        images = make_image_folder(tmp_path / "images", classes=("red_stripes", "green_bars"), per_class=3)
        (tmp_path / "names.txt").write_text("red stripes\ngreen bars\n")
        scored = invoke(["score", str(images), "--zero-shot", "--names", str(tmp_path / "names.txt"),
                                     "--backbone", "tiny-random", "--scorer", "mcm", "--format", "jsonl"])
        assert scored.exit_code == 0, scored.stderr
        rows = [json.loads(line) for line in scored.stdout.splitlines()]
        assert len(rows) == 6 and all(0.0 <= r["score"] <= 1.0 for r in rows)
        out = tmp_path / "pos.safetensors"
        trained = invoke(["fit-pos", "--data", str(images), "--backbone", "tiny-random", "--out",
                                      str(out), "--epochs", "1", "--n-ctx", "2", "--json"])
        assert trained.exit_code == 0, trained.stderr
        assert json.loads(trained.stdout)["backbone"]["backbone"] == "tiny-random"

        class Resolver:  # loaded after the built-ins: asked first for names nobody registered
            @negprompt_cli.hookimpl
            def resolve_backbone(self, name):
                return (lambda **kwargs: "resolved") if name in ("RN50x4", "tiny-random") else None

        host = registry.get_host()
        host.register_object(Resolver(), "resolver")
        assert host.backbone_factory("RN50x4")() == "resolved"  # before the built-in open_clip resolver
        assert host.backbone_factory("tiny-random").__name__ == "tiny_factory"  # a registered name wins
    finally:
        sys.modules.pop("negprompt_tiny", None)
        registry.reset_host()


def test_a_scorer_registered_with_an_unknown_property_is_skipped_with_a_warning():
    """A typo in a plugin's registration costs that registration (one warning), not the command."""
    import torch

    class Typo:
        @negprompt_cli.hookimpl
        def register_scorers(self, register):
            register("typo", lambda pos, neg=None, **kw: pos.max(1).values, probabilty=True)
            register("legacy", _legacy_scorer)

    def _legacy_scorer(pos, neg=None, **kw):
        return pos.max(1).values

    _legacy_scorer.probability_score = True  # the first contract: properties as attributes
    host = PluginHost()
    host.register_object(Typo(), "typo-plugin")
    with pytest.warns(PluginWarning, match="unknown properties probabilty .*; not registered"):
        host.fill()
    assert "typo" not in host.scorers.names()
    assert host.scorer_spec("legacy").probability and host.scorer("legacy")(torch.ones(1, 2)).item() == 1.0


@pytest.mark.parametrize(("body", "said"), [
    ("return pos.max(1).values[:1]", "returned a torch.float32 tensor of shape [1], not one floating-point score "
                                     "per image"),
    ("return pos.max(1).values * float('nan')", "returned non-finite scores for"),
    ("raise ValueError('bad axis')", "failed: ValueError: bad axis"),
])
def test_a_scorer_that_breaks_its_contract_is_named_with_its_plugin(tmp_path, body, said):
    """#40 item 3: a wrong output shape, NaN for finite features or an exception inside a scorer plugin used to
    be "unexpected ... report it" or blamed on "the prompts file or the feature cache"."""
    from PIL import Image

    class Broken:
        @negprompt_cli.hookimpl
        def register_scorers(self, register):
            namespace: dict = {}
            exec(f"def broken(pos, neg=None, *, temperature=1.0, logit_scale=100.0):\n    {body}\n", namespace)
            register("broken", namespace["broken"], description="breaks the contract")

    host = registry.get_host()
    host.register_object(Broken(), "broken_plugin")
    try:
        (tmp_path / "images").mkdir()
        for k in range(3):
            Image.new("RGB", (16, 16), (k * 60, 40, 90)).save(tmp_path / "images" / f"{k}.png")
        names = tmp_path / "names.txt"
        names.write_text("a\nb\n")
        result = invoke(["score", str(tmp_path / "images"), "--zero-shot", "--names", str(names), "--backbone",
                         "toy", "--scorer", "broken", "--out", str(tmp_path / "s.csv"), "--quiet"])
        assert result.exit_code == 1
        error = next(line for line in result.stderr.splitlines() if line.startswith("Error:"))
        assert error.startswith("Error: scorer 'broken' (plugin 'broken_plugin') ") and said in error, error
        assert "unexpected" not in result.stderr and not (tmp_path / "s.csv").exists()
    finally:
        host.unregister("broken_plugin")


@pytest.mark.parametrize(("source", "pool", "said"), [
    ("def bad(pos):\n    return pos[:, 0]", None, "too many positional arguments"),
    ("def bad(pos, neg=None, *, temperature=1.0):\n    return pos[:, 0]", None, "unexpected keyword argument "
                                                                                  "'logit_scale'"),
    ("def bad(pos, neg=None, *, temperature=1.0, logit_scale=100.0):\n    return pos[:, 0]", "neglabel",
     "unexpected keyword argument 'mined'"),
])
def test_a_scorer_with_the_wrong_signature_is_refused_when_it_registers(tmp_path, source, pool, said):
    """#40 item 3: a scorer that cannot take the core's arguments is named, with its plugin and the call, when the
    plugins load; the other scorers and the CLI keep working."""
    class Wrong:
        @negprompt_cli.hookimpl
        def register_scorers(self, register):
            namespace: dict = {}
            exec(source, namespace)
            register("wrong", namespace["bad"], pool=pool)

    host = registry.get_host()
    host.register_object(Wrong(), "wrong_plugin")
    try:
        with pytest.warns(PluginWarning) as caught:
            host.fill()
        [message] = [str(w.message) for w in caught]
        keywords = "temperature, logit_scale" + (", mined, groups, seed" if pool else "")
        assert message.startswith(f"plugin 'wrong_plugin' registers scorer 'wrong', which cannot be called as "
                                  f"scorer(pos, neg, *, {keywords}) (") and said in message
        assert message.endswith("; not registered")
        assert "wrong" not in host.scorers.names() and "mcm" in host.scorers.names()
    finally:
        host.unregister("wrong_plugin")


def test_plugins_lists_descriptions_and_each_learners_options():
    """#40 item 2: the --learner-option hint points to `negprompt plugins`, which listed neither."""
    result = invoke(["plugins", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    (learner,) = rows["negprompt_learner"]["entries"]["prompt learner"]
    options = {o["name"]: o for o in learner["options"]}
    assert options["n_neg"] == {"name": "n_neg", "type": "int", "default": 2}
    assert options["loss_variant"]["default"] == "official" and learner["description"].startswith("NegPrompt")
    scorers = {e["name"]: e for e in rows["scorers"]["entries"]["scorer"]}
    assert scorers["mcm"]["description"].startswith("Maximum concept matching")
    backbones = {e["name"]: e for e in rows["openclip"]["entries"]["backbone"]}
    assert backbones["toy"]["aliases"] == ["world"]
    text = invoke(["plugins"]).stderr + invoke(["plugins"]).stdout
    assert "options: n_neg (int, default 2)" in text and "toy (also world): tiny CLIP" in text
