#!/usr/bin/env bash
# Wheels that scripts/gpu-check.sh installs on a CUDA machine without network access: this project,
# open_clip_torch, and what open_clip needs that a CUDA image with torch usually lacks (ftfy, wcwidth), and the
# readers of shards and tables (webdataset, braceexpand, pyarrow: about 45 MB, within the 64 MiB a run carries).
# Run here (with network to the package index); the .whl/ folder travels with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip wheel -q --no-deps -w .whl .
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
  "open_clip_torch==$(python3 -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth webdataset braceexpand \
  pyarrow
ls -la .whl
