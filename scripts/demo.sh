#!/usr/bin/env bash
# The demo: every stage end to end on a small embedded default (procedurally drawn aerial-like
# tiles, tiny random-weight models, CPU). `make demo` runs it inside .venv; outputs land in
# $DEMO_OUT (default demo_out/). Each step is an ordinary entry point: swap in your own data,
# configs and weights to run the real thing.
set -euo pipefail
OUT=${DEMO_OUT:-demo_out}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

step() { printf '\n==> %s\n' "$*"; }

step "1/9 draw demo tiles (5 classes x 12) -> $OUT/images"
python -m builders.demo_images --output "$OUT/images" --per-class 12 --size 128

step "2/9 Stage 1 real set: originals, augmentations, M2B/B2C captions, zoom crops -> $OUT/shards/real"
python -m builders.real --config configs/build/real.yaml --input "$OUT/images" \
    --output "$OUT/shards/real" size=128 images_per_shard=16 splits.val_fraction=0.2

step "3/9 quality filter: scores as sidecars, global selection, report -> $OUT/quality"
python -m builders.quality --config configs/filter/tiny.yaml --input "$OUT/shards/real/train" \
    --output "$OUT/quality"

step "4/9 Stage 1 synthetic set: tiny random-weight upscale, describe, ground, segment, generate -> $OUT/shards/synthetic"
MODELS=$(python scripts/tiny_synthetic_models.py --output "$OUT/models")
python -m builders.synthetic --config configs/build/synthetic-tiny.yaml --input "$OUT/shards/real/train" \
    --output "$OUT/shards/synthetic" inputs.max_per_shard=3 $MODELS

step "5/9 quality filter on the synthetic set -> $OUT/quality_synthetic"
python -m builders.quality --config configs/filter/tiny.yaml --input "$OUT/shards/synthetic/train" \
    --output "$OUT/quality_synthetic"

step "6/9 inspect the scored shards"
python -m wds_tools.inspect "$OUT/shards/real/train"

step "7/9 materialize: filtered reshard with the scores folded in -> $OUT/shards/real_filtered"
python -m wds_tools.materialize --input "$OUT/shards/real/train" --output "$OUT/shards/real_filtered"

step "8/9 Stage 2: streaming 0.80 synthetic / 0.20 real mix -> LoRA fine-tune (tiny CLIP, CPU) -> $OUT/stage2_lora"
python -m training.train --config configs/train/tiny.yaml --real "$OUT/shards/real/train" \
    --synthetic "$OUT/shards/synthetic/train" --eval "$OUT/shards/real/val" --output "$OUT/stage2_lora"

step "9/9 export a merged open_clip checkpoint"
python -m training.export --config configs/train/tiny.yaml --output "$OUT/stage2_lora"

printf '\nDone. Look at:\n'
printf '  %s\n' "$OUT/shards/synthetic/preview.png" "$OUT/quality/quality_report.html" "$OUT/stage2_lora/training_log.json" \
    "$OUT/stage2_lora/training_curves.png" "$OUT/shards/real/train/dataset.json"
