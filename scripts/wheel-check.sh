#!/usr/bin/env bash
# The installed package, not only the checkout: build the wheel, install it alone (not editable) into a fresh
# virtualenv and run the demo and the plugin list from outside the checkout. A subpackage or data file missing
# from the wheel fails here, while an editable install would still find it in the source tree.
# Run from the repository root inside a virtualenv that has the dependencies: bash scripts/wheel-check.sh
set -euo pipefail
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps -w "$work/dist" . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
wheel=$(ls "$work"/dist/negprompt-*.whl)
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
# The dependencies come from the current environment's site-packages, added as a plain path after the wheel's own
# (a path in a .pth file is not a site directory: an editable install's hooks there stay off, and the wheel's
# metadata, first on the path, is the one entry points are read from).
deps=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/zz_dependencies.pth"
cd "$work"
"$work/venv/bin/python" - "$site" "$repo" <<'PY'
import sys

import negprompt
import negprompt_cli
import negprompt_plugins

site, repo = sys.argv[1:]
for module in (negprompt, negprompt_cli, negprompt_plugins):
    assert module.__file__.startswith(site), f"{module.__name__} imported from {module.__file__}, not the wheel"
    assert not module.__file__.startswith(repo), module.__file__
print("wheel: packages import from", site)
PY
"$work/venv/bin/negprompt" plugins --json > plugins.json
"$work/venv/bin/python" - plugins.json <<'PY'
import json
import sys

rows = json.load(open(sys.argv[1]))
names = {row["name"] for row in rows}
assert {"openclip", "coop", "negprompt_learner", "scorers"} <= names, names
assert not [row for row in rows if row["error"]], rows
print("wheel: plugins", ", ".join(sorted(names)))
PY
"$work/venv/bin/negprompt" demo --workdir "$work/demo" --json > demo.json 2> demo.err || { cat demo.err >&2; exit 1; }
"$work/venv/bin/python" -c "import json; d = json.load(open('demo.json')); print('wheel: demo ran:', sorted(d)[:6])"
test -s "$work/demo/report/report.html"
