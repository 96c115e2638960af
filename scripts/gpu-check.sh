#!/usr/bin/env bash
# One command on a CUDA machine: the test suite on CUDA, the whole CLI pipeline on the world in
# fp32/bf16/fp16, and the GPU harness (benchmarks/gpu.py); one JSON + Markdown summary.
#
#   bash scripts/gpu-check.sh [OUT_DIR]        (default: $OUT if set, else gpu-check-out/)
#
# Works with the machine's own torch: wheels in .whl/ (scripts/gpu-wheels.sh makes them: this
# project, open_clip_torch and what it needs beyond a CUDA image) are installed into a private
# folder first, nothing is fetched. Budget: about 8 minutes on one H100/H200-class GPU.
# SMOKE=1 runs the same steps with tiny sizes (how it is checked on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/negprompt-site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/negprompt-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
device=cuda
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || device=cpu
smoke=${SMOKE:-0}
[ "$device" = cpu ] && smoke=1
echo "gpu-check: device $device, smoke $smoke, output $out" >&2
neg() { "$py" -m negprompt_cli "$@"; }
started=$(date +%s)
neg env --json >"$out/env.json" 2>>"$out/pipeline.log"  # versions, devices, settings of this run

# 1. the test suite on this device: the in-process tests ('not slow', about 3.5 minutes on 2 CPU cores), so that
# the 300 s here finish them instead of stopping partway through the whole suite (the slow ones start fresh
# interpreters: torchrun, subprocesses, kill -9, locales; tests/test_scale.py's ranks run on the CPU by design)
NEGPROMPT_TEST_DEVICE=$device timeout 300 "$py" -m pytest -q -p no:cacheprovider --maxfail=25 -m "not slow" tests \
  --ignore=tests/test_scale.py >"$out/pytest.log" 2>&1
echo "$?" >"$out/pytest.rc"
tail -n 3 "$out/pytest.log" >&2

# 2. the CLI pipeline on the world, per precision (JPEG near-OOD set: the device decoder path)
work=$(mktemp -d)
neg world export "$work/w" --far 100 --test-per-class 30 2>>"$out/pipeline.log"
"$py" - "$work/w/ood_near" <<'PY' 2>>"$out/pipeline.log"
import sys, pathlib
from PIL import Image
for p in pathlib.Path(sys.argv[1]).rglob("*.png"):
    Image.open(p).convert("RGB").resize((224, 224)).save(p.with_suffix(".jpg"), quality=90); p.unlink()
PY
for precision in fp32 bf16 fp16; do
  d="$work/$precision"; mkdir -p "$d"; common=(--device "$device" --precision "$precision" --cache-dir "$d/cache")
  step() { local name=$1; shift; "$@" >>"$out/pipeline.log" 2>&1; echo "$precision $name $?" >>"$out/pipeline.rc"; }
  step fit-neg neg fit-neg --data "$work/w/train" --out "$d/neg.safetensors" --backbone toy "${common[@]}" \
    --pos-epochs 20 --epochs 5 --quiet
  step transfer neg transfer --prompts "$d/neg.safetensors" --names "$work/w/id_names.txt" \
    --out "$d/all.safetensors" --calibrate "$work/w/calib" "${common[@]}" --quiet
  for split in test ood_near ood_far; do
    step "score-$split" neg score "$work/w/$split" --prompts "$d/all.safetensors" --labeled "${common[@]}" \
      --out "$d/$split.csv" --quiet
  done
  # patch features (GL-MCM) under this precision's autocast: the last block's value path on the device
  step gl-mcm neg score "$work/w/ood_near" --prompts "$d/all.safetensors" --scorer gl-mcm "${common[@]}" \
    --out "$d/glmcm.csv" --quiet
  step report neg report --id "$d/test.csv" --ood near="$d/ood_near.csv" --ood far="$d/ood_far.csv" --json \
    --out "$d/report"
  cp "$d/report/report.json" "$out/pipeline_$precision.json" 2>/dev/null
done
step() { local name=$1; shift; "$@" >>"$out/pipeline.log" 2>&1; echo "any $name $?" >>"$out/pipeline.rc"; }
step demo neg demo --device "$device" --workdir "$work/demo"
neg fit-pos --data "$work/w/train" --out "$work/x.safetensors" --backbone toy --device cuda:99 \
  >>"$out/pipeline.log" 2>&1
echo "any bad-device-exit-code $? (expect 2)" >>"$out/pipeline.rc"
lexicon=()  # smoke (CPU): a small lexicon instead of encoding all 70k WordNet words
if [ "$smoke" = 1 ]; then
  head -n 300 negprompt_cli/assets/lexicon/wordnet/noun.artifact.txt >"$work/lexicon.txt"; lexicon=(--lexicon "$work/lexicon.txt")
fi
step neglabel neg score "$work/w/ood_near" --prompts "$work/fp32/all.safetensors" --scorer neglabel \
  --device "$device" --out "$work/neglabel.csv" --quiet "${lexicon[@]}"
step adaptive neg score "$work/w/ood_near" --prompts "$work/fp32/all.safetensors" --scorer negprompt+neglabel \
  --adaptive --device "$device" --out "$work/adaptive.csv" --quiet "${lexicon[@]}"
# test-time and local methods on the device: TANL's stream (corpus, memories and noise images on CUDA) and
# LoCoOp's training on patch rows of its released augmentation (resized-crop views, one per epoch)
step tanl neg score "$work/w/ood_near" --zero-shot --names "$work/w/id_names.txt" --backbone toy --scorer tanl \
  --batch-size 256 --device "$device" --cache-dir "$work/tanl-cache" --out "$work/tanl.csv" --quiet
step locoop neg fit-pos --data "$work/w/train" --backbone toy --learner locoop --learner-option top_k=2 \
  --epochs 3 --aug-views 3 --augment resized-crop --device "$device" --cache-dir "$work/locoop-cache" \
  --out "$work/locoop.safetensors" --quiet
# NegRefine: its pair texts are encoded during scoring, on the device the images' features are on
step negrefine neg score "$work/w/ood_near" --zero-shot --names "$work/w/id_names.txt" --backbone toy \
  --scorer negrefine --device "$device" --cache-dir "$work/negrefine-cache" --out "$work/negrefine.csv" --quiet
# CSP as released (template ensembles, shared prefixes) on ViT-B/16's text tower: the first zero-shot run's time
printf 'dog\ncat\nschool bus\nred fox\n' >"$work/names.txt"
csp_started=$(date +%s)
step csp-zero-shot neg score "$work/w/ood_near" --zero-shot --names "$work/names.txt" --backbone ViT-B/16 \
  --pretrained none --scorer csp --device "$device" --cache-dir "$work/csp-cache" --out "$work/csp.csv" --quiet \
  "${lexicon[@]}"
echo "$(( $(date +%s) - csp_started ))" >"$out/csp_first_run_seconds"
# torchrun over two GPUs (nccl): the same bytes as one process (only on a machine with 2+ GPUs)
gpus=$("$py" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$gpus" -ge 2 ]; then
  neg score "$work/w/test" --prompts "$work/fp32/all.safetensors" --device cuda --cache-dir "$work/c1" \
    --out "$work/one.csv" --quiet >>"$out/pipeline.log" 2>&1
  OMP_NUM_THREADS=4 "$py" -m torch.distributed.run --standalone --nproc-per-node 2 -m negprompt_cli score \
    "$work/w/test" --prompts "$work/fp32/all.safetensors" --cache-dir "$work/c2" --out "$work/two.csv" --quiet \
    >>"$out/pipeline.log" 2>&1
  cmp -s "$work/one.csv" "$work/two.csv"
  echo "any torchrun-nccl-same-bytes $?" >>"$out/pipeline.rc"
fi
rm -rf "$work"

# 3. the GPU harness
sections=(fit_neg epoch score)
timeout 330 "$py" benchmarks/gpu.py --out "$out" $([ "$smoke" = 1 ] && echo --smoke) --sections "${sections[@]}" \
  >"$out/harness.log" 2>&1
echo "$?" >"$out/harness.rc"

# 4. one summary
"$py" - "$out" "$(( $(date +%s) - started ))" <<'PY'
import json, pathlib, sys
out, seconds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
read = lambda name: (out / name).read_text() if (out / name).exists() else ""
pytest_tail = [l for l in read("pytest.log").splitlines() if l.strip()][-1:] or ["(no pytest output)"]
steps = [l.split() for l in read("pipeline.rc").splitlines() if l.strip()]
pipeline = {f"{s[0]} {s[1]}": int(s[2]) for s in steps}
reports = {}
for p in ("fp32", "bf16", "fp16"):
    if (out / f"pipeline_{p}.json").exists():
        r = json.loads(read(f"pipeline_{p}.json"))
        reports[p] = {k: {"auroc": v["auroc"], "fpr": v["fpr"]} for k, v in r["ood"].items()} | {"id_accuracy": r["id"]["accuracy"]}
harness = json.loads(read("gpu.json")) if (out / "gpu.json").exists() else None
summary = {"seconds": seconds, "pytest": {"rc": int(read("pytest.rc") or 1), "last_line": pytest_tail[0]},
           "pipeline": pipeline, "pipeline_reports": reports, "harness_rc": int(read("harness.rc") or 1),
           "csp_first_run_seconds": int(read("csp_first_run_seconds") or -1),
           "harness": harness}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = ["# negprompt GPU check", "", f"{seconds} s in all.", "", f"- tests on the device: `{pytest_tail[0]}` (exit {summary['pytest']['rc']})",
         "- CLI pipeline steps (exit codes): " + ", ".join(f"{k}={v}" for k, v in pipeline.items()),
         f"- first `score --zero-shot --scorer csp`, ViT-B/16 (random weights), WordNet: "
         f"{summary['csp_first_run_seconds']} s (docs/performance.md has the 2-core CPU figure)", ""]
for p, r in reports.items():
    lines.append(f"- world pipeline {p}: " + ", ".join(f"{k} AUROC {v['auroc']:.3f} FPR95 {v['fpr']:.3f}"
                                                   for k, v in r.items() if isinstance(v, dict))
                 + f", ID accuracy {r['id_accuracy']:.3f}")
lines += ["", read("gpu.md") or f"(harness failed: see harness.log, exit {summary['harness_rc']})"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
