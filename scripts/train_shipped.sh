#!/usr/bin/env bash
# Train the three shipped models (redkern/weights/) at once on one CUDA GPU. Needs redkern
# importable (installed, or PYTHONPATH=. from the repository root; the extension is not needed).
#
#   python scripts/prepare_data.py --install          # the dataset, once
#   scripts/train_shipped.sh [DATA] [OUT] [BUDGET_S]  # defaults: .data/redkern-gray runs 500
#
# Each task trains RED30-64 (the reference model: cuDNN, bf16 autocast, channels_last) for
# as many steps as fit BUDGET_S seconds while the three share the GPU (--time-budget measures
# the speed and sets --steps; the log and the checkpoint record the count, and
# `--steps N` without --time-budget repeats that schedule). Checkpoints land in OUT every
# 60 s, so an interrupted run still leaves weights. Export them with
# `python scripts/export_weights.py OUT/TASK.pt`.
set -euo pipefail
data=${1:-.data/redkern-gray}
out=${2:-runs}
budget=${3:-500}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
common=(--data "$data" --device cuda --amp bf16 --depth 30 --features 64 --patch 50 --batch 64
        --lr 5e-4 --schedule cosine --steps 100000 --time-budget "$budget" --val-every 1000
        --ckpt-seconds 60 --seed 0 --no-progress)
pids=()
python3 -m redkern.training --task denoise --levels 0-50 --workers 3 --out "$out/denoise.pt" "${common[@]}" \
    >"$out/denoise.log" 2>&1 & pids+=($!)
python3 -m redkern.training --task sr --levels 2,3,4 --workers 3 --out "$out/sr.pt" "${common[@]}" \
    >"$out/sr.log" 2>&1 & pids+=($!)
python3 -m redkern.training --task jpeg --levels 10-40 --workers 4 --out "$out/jpeg.pt" "${common[@]}" \
    >"$out/jpeg.log" 2>&1 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
