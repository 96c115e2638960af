"""Named lists of negative labels (#34 item 2): ``--negatives NAME`` for a list a plugin registers, as a local
folder or as files fetched from their home on first use (checked against pinned SHA-256 digests, kept in the cache,
read offline afterwards). The network here is a loopback file server; nothing leaves the machine."""

from __future__ import annotations

import hashlib
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import error_line, invoke, make_image_folder

from negprompt_cli import registry
from negprompt_cli.errors import HubError, NegPromptNotice, UsageError
from negprompt_cli.features.feature_cache import foreign_entries
from negprompt_cli.hookspecs import hookimpl
from negprompt_cli.registry import RemoteFile, RemoteFiles
from negprompt_cli.scoring.negative_labels import read_negatives
from negprompt_cli.scoring.negative_lists import cached_folder, fetch, negatives_path

NOUNS = b"spaceship\nvolcano\n# a comment\nlighthouse\n"
ADJECTIVES = b"gooey landscape\n"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base URL, the folder it serves, the requests it answered): a loopback file server, stopped afterwards."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                 "HF_HUB_OFFLINE"):  # online, but only towards 127.0.0.1
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    (root / "neg_labels_noun.txt").write_bytes(NOUNS)
    (root / "neg_labels_adj.txt").write_bytes(ADJECTIVES)
    asked: list[str] = []

    class Handler(_Quiet):
        def do_GET(self):  # type: ignore[no-untyped-def]
            asked.append(self.path)
            if self.path.endswith("/cut.txt"):  # promises 100 bytes, sends 10, hangs up
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.write(b"spaceship\n")
                self.close_connection = True
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, asked
    server.shutdown()
    server.server_close()


def remote(base: str, *, noun: str | None = None, adj: str | None = None) -> RemoteFiles:
    """The two files the loopback server serves, pinned by their digests unless a test pins others."""
    files = (("neg_labels_noun.txt", NOUNS, noun), ("neg_labels_adj.txt", ADJECTIVES, adj))
    return RemoteFiles(tuple(RemoteFile(name, base + name, pinned or hashlib.sha256(data).hexdigest())
                             for name, data, pinned in files), licence="MIT", source="a test's release")


def test_a_remote_list_is_fetched_once_checked_and_read_offline_afterwards(served, tmp_path):
    base, _, asked = served
    files = remote(base)
    folder, fetched = fetch(files, tmp_path / "cache", offline=False, what="list 'mine'")
    assert folder == cached_folder(files, tmp_path / "cache") and folder.parent.name == "lists"
    assert sorted(fetched) == ["neg_labels_adj.txt", "neg_labels_noun.txt"] and len(asked) == 2
    assert (folder / "neg_labels_noun.txt").read_bytes() == NOUNS
    assert sorted(p.name for p in folder.iterdir()) == ["neg_labels_adj.txt", "neg_labels_noun.txt"]  # no temp left
    assert foreign_entries(tmp_path / "cache") == []  # the cache knows the folder as its own (cache gc / verify)
    assert read_negatives(folder) == (["spaceship", "volcano", "lighthouse", "gooey landscape"],
                                      ["noun"] * 3 + ["adjective"])
    # cached: nothing is asked again, and offline reads the copy
    assert fetch(files, tmp_path / "cache", offline=True, what="list 'mine'") == (folder, [])
    assert len(asked) == 2
    # a cached file that no longer matches its digest is fetched again (the other one is not)
    (folder / "neg_labels_adj.txt").write_bytes(b"tampered\n")
    assert fetch(files, tmp_path / "cache", offline=False, what="list 'mine'")[1] == ["neg_labels_adj.txt"]
    assert (folder / "neg_labels_adj.txt").read_bytes() == ADJECTIVES and len(asked) == 3
    # new digests pinned by a plugin name another folder: an old copy is never read for them
    changed = remote(base, adj=hashlib.sha256(b"other\n").hexdigest())
    assert cached_folder(changed, tmp_path / "cache") != folder


def test_fetch_failures_are_one_error_and_leave_no_file(served, tmp_path):
    base, root, _ = served
    cache = tmp_path / "cache"
    with pytest.raises(HubError, match="is not in the cache .* and negprompt is offline") as offline:
        fetch(remote(base), cache, offline=True, what="negative-label list 'mine'")
    assert "negative-label list 'mine'" in str(offline.value) and offline.value.exit_code == 4
    wrong = remote(base, noun=hashlib.sha256(b"what the plugin pinned\n").hexdigest())
    with pytest.raises(HubError, match="neg_labels_noun.txt .* does not match its pinned SHA-256.*nothing was kept"):
        fetch(wrong, cache, offline=False, what="list")
    assert not (cached_folder(wrong, cache) / "neg_labels_noun.txt").exists()
    assert [p.name for p in cached_folder(wrong, cache).iterdir()] == []  # the temporary file went too
    (root / "neg_labels_adj.txt").unlink()
    with pytest.raises(HubError, match=r"neg_labels_adj.txt answered HTTP 404"):
        fetch(remote(base), cache, offline=False, what="list")
    cut = RemoteFiles((RemoteFile("neg_labels_noun.txt", base + "cut.txt", hashlib.sha256(NOUNS).hexdigest()),))
    with pytest.raises(HubError, match=r"cannot fetch .*/cut.txt \(the connection closed after 10 of 100 bytes\)"):
        fetch(cut, tmp_path / "cut", offline=False, what="list")
    assert list(cached_folder(cut, tmp_path / "cut").iterdir()) == []
    with pytest.raises(HubError, match="cannot fetch http://127.0.0.1:9/"):
        fetch(remote("http://127.0.0.1:9/"), tmp_path / "other", offline=False, what="list")


def test_remote_file_records_refuse_what_cannot_be_a_file_or_a_digest():
    with pytest.raises(TypeError, match="plain file name"):
        RemoteFile("../x.txt", "http://h/x", "0" * 64)
    with pytest.raises(TypeError, match="64 lower-case hex"):
        RemoteFile("x.txt", "http://h/x", "ABC")
    with pytest.raises(TypeError, match="each name once"):
        RemoteFiles((RemoteFile("x.txt", "http://h/x", "0" * 64),) * 2)


def _register(monkeypatch, plugin) -> registry.PluginHost:  # type: ignore[no-untyped-def]
    host = registry.PluginHost()
    host.load_entry_points(None)
    monkeypatch.setattr(registry, "_host", host)
    host.register_object(plugin, "mylists")
    return host


def test_a_named_list_is_a_registered_folder_or_remote_files(served, tmp_path, monkeypatch):
    base, _, _ = served
    local = tmp_path / "local.txt"
    local.write_text("teapot\n")

    class Lists:
        @hookimpl
        def register_negative_lists(self, register):  # type: ignore[no-untyped-def]
            register("teaware", local, description="pots")
            register("fetched", remote(base), description="from the loopback server")
            register("ghost", tmp_path / "absent")
            register("odd", remote(base), licence="MIT")

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        host = _register(monkeypatch, Lists())
        host.fill()
    told = [str(w.message) for w in said]
    assert any("registers negative-label list 'ghost'" in t and "does not exist" in t for t in told)
    assert any("registers negative-label list 'odd' with unknown keyword(s) licence" in t for t in told)
    cache = tmp_path / "cache"
    assert negatives_path(Path("teaware"), cache) == local
    told = r"fetched negative-label list 'fetched' into .* \(a test's release; MIT\)"
    with pytest.warns(NegPromptNotice, match=told):
        folder = negatives_path(Path("fetched"), cache)
    assert folder == cached_folder(remote(base), cache)
    assert negatives_path(Path("fetched"), cache, offline=True) == folder  # cached: no notice, no network
    mine = tmp_path / "fetched"
    mine.write_text("kettle\n")
    assert negatives_path(Path(str(mine)), cache) == mine  # a path that exists always wins over a name
    with pytest.raises(UsageError, match="unknown negative-label list 'fetchd'") as unknown:
        negatives_path(Path("fetchd"), cache)
    assert "fetched" in (unknown.value.hint or "")
    rows = [r for r in host.describe() if r["name"] == "mylists"][0]["entries"]["negative-label list"]
    assert [r["name"] for r in rows] == ["teaware", "fetched"] and "fetched" not in rows[0]
    assert rows[1]["fetched"] == {"source": "a test's release", "licence": "MIT", "files": [
        {"name": f.name, "url": f.url, "sha256": f.sha256} for f in remote(base).files]}


def scoring_named_list(served, tmp_path, monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The loopback server's files registered as the list ``fetched``, and the start of a zero-shot ``score``
    command (csp, the toy backbone, JSONL) on a small image folder of two classes."""
    base, _, _ = served

    class Lists:
        @hookimpl
        def register_negative_lists(self, register):  # type: ignore[no-untyped-def]
            register("fetched", remote(base))

    _register(monkeypatch, Lists())
    images = make_image_folder(tmp_path / "imgs", classes=("red_stripes", "green_bars"), per_class=2)
    names = tmp_path / "names.txt"
    names.write_text("red stripes\ngreen bars\n")
    return ["score", str(images), "--zero-shot", "--names", str(names), "-b", "toy", "--scorer", "csp", "--format",
            "jsonl"]


def test_score_takes_a_named_list_and_scores_as_its_files_do(served, tmp_path, monkeypatch):
    _, root, _ = served
    base_args = [*scoring_named_list(served, tmp_path, monkeypatch), "--cache-dir", str(tmp_path / "cache")]
    for offline in (invoke([*base_args, "--negatives", "fetched", "--offline"]),
                    invoke([*base_args, "--negatives", "fetched"], env={"HF_HUB_OFFLINE": "1"})):
        assert offline.exit_code == 4, offline.stderr
        assert error_line(offline).startswith("Error: negative-label list 'fetched' is not in the cache")
    by_name = invoke([*base_args, "--negatives", "fetched"])
    assert by_name.exit_code == 0, by_name.stderr
    assert "Note: fetched negative-label list 'fetched' into" in by_name.stderr
    assert "4 negative labels from the --negatives list of 4" in by_name.stderr
    by_folder = invoke([*base_args, "--negatives", str(root)])
    assert by_folder.exit_code == 0 and by_folder.stdout == by_name.stdout
    again = invoke([*base_args, "--negatives", "fetched", "--offline"])  # now from the cache
    assert again.exit_code == 0 and again.stdout == by_name.stdout and "fetched negative-label" not in again.stderr
    unknown = invoke([*base_args, "--negatives", "fetchd"])
    assert unknown.exit_code == 2 and error_line(unknown) == "Error: unknown negative-label list 'fetchd'"
    missing = invoke([*base_args, "--negatives", str(tmp_path / "absent.txt")])
    assert missing.exit_code == 3 and "negative-label list not found" in missing.stderr


def test_negrefines_list_is_registered_by_its_pinned_address_not_shipped():
    """NegRefine's list (MIT) is fetched from its release at one commit; negprompt's files hold no copy."""
    from negprompt_cli.registry import get_host

    source = get_host().negative_list("negrefine-imagenet1k")
    assert isinstance(source, RemoteFiles)
    assert [f.name for f in source.files] == ["neg_labels_noun.txt", "neg_labels_adj.txt"]
    for file in source.files:
        assert file.url == ("https://raw.githubusercontent.com/ah-ansari/NegRefine/"
                            f"72e4b82d8d48ae298ceabbb3322ac13799cd0c88/output/imagenet/seed_0/{file.name}")
    assert "MIT" in source.licence and "72e4b82" in source.source
    listed = invoke(["plugins"])
    assert listed.exit_code == 0 and "negrefine-imagenet1k: NegRefine's LLM-filtered negative labels" in listed.stdout
    assert ("fetched on first use from: ah-ansari/NegRefine @72e4b82, output/imagenet/seed_0; licence: MIT License"
            in listed.stdout)
    package = Path(__file__).resolve().parent.parent
    shipped = [p for d in ("negprompt_cli", "plugins") for p in (package / d).rglob("neg_labels_*")]
    assert shipped == []


def test_a_detector_takes_a_named_list_as_score_does(served, tmp_path, monkeypatch):
    import json

    import negprompt

    score_args = scoring_named_list(served, tmp_path, monkeypatch)
    with pytest.raises(HubError, match="not in the cache"):
        negprompt.Detector.zero_shot(["red stripes", "green bars"], backbone="toy", scorer="csp", negatives="fetched",
                                     offline=True, device="cpu")
    with pytest.warns(NegPromptNotice, match="fetched negative-label list 'fetched'"):
        detector = negprompt.Detector.zero_shot(["red stripes", "green bars"], backbone="toy", scorer="csp",
                                                negatives="fetched", device="cpu")
    result = invoke([*score_args, "--negatives", "fetched"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["score"] for m in detector.score([r["path"] for r in rows])] == [r["score"] for r in rows]
