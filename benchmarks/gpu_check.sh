#!/usr/bin/env bash
# One prepared GPU check (issue 17): install what a bare GPU machine lacks, time candidate
# training (benchmarks/gpu_candidates.py: ResNet-56 and VGG-16 epochs on the fast path and with
# a DataLoader; 1, 2, 4 and 8 packed trials), run a mini search end to end with fractional-GPU
# trials (search.resources.gpu: 0.25), and write every figure to OUT/gpu_check.json.
#
#   benchmarks/gpu_check.sh [--tiny] [OUT]     (OUT defaults to $OUT, else ./gpu_check_out)
#
# The GPU machine has torch but not Ray: put the wheels of Ray and the other dependencies in
# ./wheels (pip download -d wheels ray[tune] optuna torch-pruning ... on a machine with network)
# and carry that folder; without it pip installs from the package index. --tiny runs a few
# hundred images and a 2-candidate search on whatever device there is (the tests run it on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
OUTDIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}

if ! $PY -c "import ray.tune, structsearch" 2>/dev/null; then
  if [[ -d wheels ]]; then
    $PY -m pip install -q --no-index --find-links wheels -e . 2>&1 | tail -3
  else
    $PY -m pip install -q -e . 2>&1 | tail -3
  fi
fi

# One interpreter for both (importing torch takes seconds): the device, then the card's name.
{ read -r DEVICE; read -r GPU_NAME; } < <($PY -c "import torch; c = torch.cuda.is_available()
print('cuda' if c else 'cpu'); print(torch.cuda.get_device_name(0) if c else 'none')")
echo "device: $DEVICE ($GPU_NAME)"

BENCH_ARGS=(--device "$DEVICE" --json "$OUTDIR/gpu_candidates.json")
if [[ $TINY == 1 ]]; then BENCH_ARGS+=(--tiny); fi
$PY benchmarks/gpu_candidates.py "${BENCH_ARGS[@]}" | tee "$OUTDIR/gpu_candidates.txt"

# A mini search end to end: four trials share one GPU (0.25 each); on CPU, plain CPU trials.
GPU_SHARE=0.25
if [[ $DEVICE == cpu ]]; then GPU_SHARE=0; fi
CANDIDATES=8; EPOCHS=2; DATA=mnist5k; FINETUNE=1; EXTRA=()
# Tiny: no re-evaluation trials, no one-shot baselines and a 0-epoch fine-tune (the winner
# measured as the search left it, without a trial); the full check keeps all three.
if [[ $TINY == 1 ]]; then CANDIDATES=2; EPOCHS=1; DATA=digits; FINETUNE=0
  EXTRA=(--set search.reevaluate=0 --set "final.baselines=[]"); fi
rm -rf "$OUTDIR/search"
START=$(date +%s.%N)
$PY -m structsearch.cli search configs/demo.yaml --out "$OUTDIR/search" \
  --set data.name=$DATA --set baseline.epochs=$EPOCHS --set search.searcher=random \
  --set search.candidates=$CANDIDATES --set search.epochs=1 --set search.concurrent=4 \
  --set search.resources.gpu=$GPU_SHARE --set final.finetune_epochs=$FINETUNE --set final.scratch=[] \
  --set final.compile=true "${EXTRA[@]}" 2>&1 | tee "$OUTDIR/search.txt"
END=$(date +%s.%N)

$PY - "$OUTDIR" "$DEVICE" "$GPU_NAME" "$START" "$END" "$GPU_SHARE" <<'PY'
import json, sys
from pathlib import Path
out, device, name, start, end, share = sys.argv[1:]
summary = json.loads((Path(out) / "search" / "summary.json").read_text())
figures = {
    "device": device, "gpu": name, "gpu_per_trial": float(share),
    "gpu_candidates": json.loads((Path(out) / "gpu_candidates.json").read_text()),
    "search": {"seconds": float(end) - float(start),
               "candidates": summary["search"]["evaluated"],
               "winner_val_acc": summary["winner"]["val_acc"],
               "finetune_test_acc": (summary.get("finetune") or {}).get("test_acc"),
               "speed": summary.get("speed")},
}
(Path(out) / "gpu_check.json").write_text(json.dumps(figures, indent=2))
print(json.dumps({k: v for k, v in figures.items() if k != "gpu_candidates"}, indent=2))
PY
