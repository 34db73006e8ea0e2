#!/usr/bin/env bash
# Step time and peak memory of sl and mtpsl at the paper's shapes on one GPU: NYU-v2 288x384
# batch 2, Cityscapes 128x256 batch 8, PASCAL-Context 512x512 batch 6 (sl only: MTPSL has no
# ResNet mapping encoder yet), float32 and mixed_float16, XLA on and off. One JSON line per case
# (benchmarks/train_step.py; peak_gpu_mb is TensorFlow's peak GPU allocation).
#
#   bash benchmarks/gpu_suite.sh            # the paper's shapes (meant for a GPU)
#   SMOKE=1 bash benchmarks/gpu_suite.sh    # tiny shapes, one case per method: checks it runs
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
steps="${STEPS:-5}"
warmup="${WARMUP:-2}"

run() {  # dataset backbone height width batch method precision xla [extra flags...]
  local dataset=$1 backbone=$2 height=$3 width=$4 batch=$5 method=$6 precision=$7 xla=$8
  shift 8
  python benchmarks/train_step.py --dataset="$dataset" --backbone="$backbone" --height="$height" \
    --width="$width" --batch_size="$batch" --method="$method" --precision="$precision" \
    --"$xla" --steps="$steps" --warmup="$warmup" "$@" 2>/dev/null | tail -n 1
}

if [[ "${SMOKE:-0}" == 1 ]]; then
  steps=1 warmup=1
  for method in sl mtpsl; do
    run nyuv2 segnet 32 64 2 "$method" float32 noxla --filters=4,4,8,8,8
  done
  exit 0
fi

for precision in float32 mixed_float16; do
  for xla in xla noxla; do
    for method in sl mtpsl; do
      run nyuv2 segnet 288 384 2 "$method" "$precision" "$xla"
      run cityscapes segnet 128 256 8 "$method" "$precision" "$xla"
    done
    run pascal_context resnet18_aspp 512 512 6 sl "$precision" "$xla"
  done
done
