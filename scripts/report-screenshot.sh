#!/usr/bin/env bash
# docs/report.png: the offline demo's HTML report as a headless Chromium renders it (Debian package chromium).
# Run from the repository root with the project installed: bash scripts/report-screenshot.sh
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
negprompt demo --workdir "$work/demo" >/dev/null
python - "$work/demo/report/report.html" "$work/shot.png" docs/report.png <<'PY'
import sys

from PIL import Image

from negprompt_cli.report.screenshot import screenshot

page, shot, out = sys.argv[1:]
screenshot(page, shot, width=1100, height=3400)
image = Image.open(shot).convert("RGB")
image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)  # a small file
print(f"wrote {out} ({image.width}x{image.height})")
PY
