#!/usr/bin/env bash
# Fine-tune the shipped denoiser into the deblurring and text-removal models on a CPU, one
# task per core (as shipped: a 2-core VM, no GPU). Needs redkern installed with its CPU
# extension (the fused model's forward and backward run on our kernels).
#
#   python -m redkern.photos .data/redkern-photos           # the 41 + 8 photographs, once
#   scripts/train_cpu_finetunes.sh [DATA] [OUT] [BUDGET_S]  # defaults: .data/redkern-photos runs 7200
#
# Each run starts from redkern/weights/red30_denoise.pt (--init denoise) and trains for as many
# steps as fit BUDGET_S (--time-budget sets --steps; the checkpoint records the count). The
# runs are pinned to one core each with one thread, so they do not disturb each other.
# Running the script again resumes both from OUT. Export with
# `python scripts/export_weights.py OUT/deblur.pt OUT/inpaint.pt`.
set -euo pipefail
data=${1:-.data/redkern-photos}
out=${2:-runs}
budget=${3:-7200}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
common=(--data "$data" --device cpu --init denoise --depth 30 --features 64 --patch 50 --batch 32
        --lr 3e-4 --warmup 100 --schedule cosine --time-budget "$budget" --val-every 250
        --ckpt-seconds 300 --seed 0 --no-progress)
pids=()
taskset -c 0 python3 -m redkern.training --task deblur --levels 1-3 --noise 0-2 --out "$out/deblur.pt" \
    "${common[@]}" >"$out/deblur.log" 2>&1 & pids+=($!)
taskset -c 1 python3 -m redkern.training --task inpaint --levels 5-20 --out "$out/inpaint.pt" \
    "${common[@]}" >"$out/inpaint.log" 2>&1 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
