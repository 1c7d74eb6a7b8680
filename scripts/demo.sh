#!/usr/bin/env bash
# The demo: every stage end to end on a small embedded default (procedurally drawn aerial-like
# tiles, tiny models, CPU). `make demo` runs it inside .venv; outputs land in $DEMO_OUT (default
# demo_out/). Each step is an ordinary entry point: swap in your own data, configs and weights.
#
#   DEMO_IMAGES=/path/to/images make demo   # your own folder tree of tiles (folder name = class)
#   REMOTECLIP=/path/RemoteCLIP-ViT-B-32.pt make demo   # real base weights instead of the stand-in
#
# Without REMOTECLIP the base model is a stand-in: the tiny CLIP trained for about a minute on the
# captions of separate demo tiles (drawn with another seed, training.standin_base), so it knows every word
# the later steps use but not the tiles Stage 2 then learns from, as RemoteCLIP knows the aerial
# domain but not a user's new tiles (a base trained on the fine-tune images leaves Stage 2 nothing
# to add: benchmarks/bench_learning.py). It is not RemoteCLIP; the summary says which base was used.
set -euo pipefail
OUT=${DEMO_OUT:-demo_out}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # two Stage 2 ranks on a 2-core machine: one thread each

step() { printf '\n==> %s\n' "$*"; }

if [ -n "${DEMO_IMAGES:-}" ]; then
    step "1/12 your images: $DEMO_IMAGES"
    IMAGES=$DEMO_IMAGES
else
    # the hard set: 10 classes that share colours, each tile with its own exposure and colour cast
    # (DEMO_SET=basic: the 5 plain classes, which a brief base already tells apart)
    step "1/12 draw demo tiles (${DEMO_SET:-hard} set, 20 per class) -> $OUT/images"
    python -m builders.demo_images --output "$OUT/images" --per-class 20 --size 128 --set "${DEMO_SET:-hard}"
    IMAGES=$OUT/images
fi

step "2/12 Stage 1 real set: originals, augmentations, M2B/B2C captions, zoom crops -> $OUT/shards/real"
python -m builders.real --config configs/build/real.yaml --input "$IMAGES" \
    --output "$OUT/shards/real" size=128 images_per_shard=16 splits.val_fraction=0.2

if [ -n "${REMOTECLIP:-}" ]; then
    step "3/12 base model: RemoteCLIP weights from $REMOTECLIP"
    FILTER_CONFIG=configs/filter/default.yaml
    TRAIN_CONFIG=configs/train/lora.yaml
    BASE_ARGS=("model.pretrained=$REMOTECLIP")
    TRAIN_ARGS=("model.pretrained=$REMOTECLIP" train.max_steps=20 train.batch_size=8 train.mixed_precision=no
                train.checkpoint_every=10 eval.max_samples=64)
    FILTER_ARGS=("model.pretrained=$REMOTECLIP" model.device=cpu model.precision=fp32)
else
    step "3/12 base model: stand-in tiny CLIP trained briefly, in full, on other tiles' captions -> $OUT/base"
    if [ -n "${DEMO_IMAGES:-}" ]; then
        BASE_SHARDS=$OUT/shards/real/train   # your images only: the base sees the fine-tune images too
    else
        python -m builders.demo_images --output "$OUT/base_images" --per-class 4 --size 128 --seed 1 \
            --set "${DEMO_SET:-hard}"
        python -m builders.real --config configs/build/real.yaml --input "$OUT/base_images" \
            --output "$OUT/shards/base_real" size=128 images_per_shard=8 preview=false
        BASE_SHARDS=$OUT/shards/base_real/train
    fi
    # 40 steps: enough to learn the demo's words, not so many that the five demo classes are
    # already solved (a 300-step base is at 100% zero-shot, leaving Stage 2 nothing to show)
    python -m training.standin_base --config configs/train/base-tiny.yaml --real "$BASE_SHARDS" \
        --output "$OUT/base" --steps "${DEMO_BASE_STEPS:-40}"
    FILTER_CONFIG=configs/filter/demo.yaml
    TRAIN_CONFIG=configs/train/demo.yaml
    BASE="$OUT/base/base.pt"
    FILTER_ARGS=("model.pretrained=$BASE")
    TRAIN_ARGS=("model.pretrained=$BASE")
fi

step "4/12 Stage 1 synthetic set: tiny random-weight upscale, describe, ground, segment, generate -> $OUT/shards/synthetic"
MODELS=$(python scripts/tiny_synthetic_models.py --output "$OUT/models")
# The tiny generators have random weights: img2img and text2img re-draw the whole tile as noise,
# while an inpaint edit keeps the real pixels outside its mask. So the demo leans on the inpaint
# modes, and skips the random upscaler for tiles already at the generation size (skip_large, the
# production default), so the edits start from the real tile. With real weights use the config's
# mix as it is.
# shellcheck disable=SC2086  # MODELS is a list of key=value overrides
python -m builders.synthetic --config configs/build/synthetic-tiny.yaml --input "$OUT/shards/real/train" \
    --output "$OUT/shards/synthetic" modes.per_image=3 upscale.skip_large=true \
    modes.mix.inpaint_replace=0.4 modes.mix.inpaint_remove=0.4 modes.mix.img2img=0.1 modes.mix.text2img=0.1 \
    $MODELS

step "5/12 quality filter, scored by the base model, over both sets together -> $OUT/quality"
# One cut over real and synthetic samples, as in production: the noise images fall below it, the
# inpaint edits that still look like their captions stay.
python -m builders.quality --config "$FILTER_CONFIG" --output "$OUT/quality" \
    "input=[$OUT/shards/real/train,$OUT/shards/synthetic/train]" "${FILTER_ARGS[@]}"

step "6/12 inspect the scored shards"
python -m wds_tools.inspect "$OUT/shards/real/train" "$OUT/shards/synthetic/train"

step "7/12 materialize: filtered reshard with the scores folded in -> $OUT/shards/real_filtered"
python -m wds_tools.materialize --input "$OUT/shards/real/train" --output "$OUT/shards/real_filtered"

step "8/12 Stage 2: 0.80 synthetic / 0.20 real mix, LoRA, two CPU processes (accelerate launch), TensorBoard events -> $OUT/stage2_lora"
# Two ranks on gloo: --cpu --num_processes 2 alone starts ONE process; this spelling starts two.
ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
    --mixed_precision no --dynamo_backend no --main_process_port "${DEMO_PORT:-29517}" -m training.train \
    --config "$TRAIN_CONFIG" --real "$OUT/shards/real/train" --synthetic "$OUT/shards/synthetic/train" \
    --eval "$OUT/shards/real/val" --output "$OUT/stage2_lora" "train.report_to=[tensorboard]" "${TRAIN_ARGS[@]}"

step "9/12 for contrast: the same Stage 2 on the real set only (one process) -> $OUT/stage2_real"
# What the synthetic share adds: the same Stage 2 on the real set only. With random-weight
# generators the few kept synthetic samples are real tiles with a noisy patch, so expect little
# difference; with real generation weights the mix is the run to keep.
python -m training.train --config "$TRAIN_CONFIG" --real "$OUT/shards/real/train" \
    --eval "$OUT/shards/real/val" --output "$OUT/stage2_real" data.synthetic_ratio=0 "${TRAIN_ARGS[@]}"

step "10/12 evaluate the trained adapter ($OUT/stage2_lora/peft_adapter) on the held-out set"
# The same held-out set and settings as step 8's evaluation: these figures equal its "after".
python -m training.evaluate --config "$TRAIN_CONFIG" --shards "$OUT/shards/real/val" \
    --output "$OUT/stage2_lora" "${TRAIN_ARGS[@]}"

step "11/12 export a merged open_clip checkpoint, and the open_clip hub folder with a model card"
python -m training.export --config "$TRAIN_CONFIG" --output "$OUT/stage2_lora" "${TRAIN_ARGS[@]}"
python -m training.export --format open_clip-hub --config "$TRAIN_CONFIG" --output "$OUT/stage2_lora" \
    "${TRAIN_ARGS[@]}"

step "12/12 summary"
python scripts/demo_summary.py "$OUT"
