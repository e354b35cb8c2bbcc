#!/usr/bin/env bash
# Vision benchmark: PADRe vs softmax detector forward latency and images/s at 256, 1024 and 4096 tokens,
# batch 1 and 8 (random-weight models of the shipped shape), then the shipped models' accuracy side by
# side (deltaserve-detect-eval on the held-out set).   bench/vision.sh [--device cpu|cuda]
# On CUDA the sizes go to 16,384 tokens and the batches to 32 (issue 17's table), PADRe also runs with its
# mixer as the ATen composition (the fused kernel's baseline in the same run) and replayed as CUDA graphs
# (as the server runs it), and the accuracy goes through the CUDA path. VISION_SIZES and VISION_BATCHES
# override either default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
device="cpu"
[[ "${1:-}" == "--device" ]] && device="$2"
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
cmake --build "${build}" --target bench_vision deltaserve-detect-eval >/dev/null
work="${TMPDIR:-/tmp}/deltaserve-bench-vision"
if [[ "${device}" == cuda* ]]; then
  sizes="${VISION_SIZES:-128,256,512,1024}" batches="${VISION_BATCHES:-1,8,32}" extra=(--padre-composition --cuda-graphs)
else
  sizes="${VISION_SIZES:-128,256,512}" batches="${VISION_BATCHES:-1,8}" extra=()
fi
"${DELTASERVE_PYTHON}" "${root}/bench/make_vision_bench_models.py" "${work}/models" "${sizes}"
"${build}/bench/bench_vision" "${work}/models" --device "${device}" --sizes "${sizes}" --batches "${batches}" "${extra[@]}"
[[ -f "${work}/val500/instances_val.json" ]] || "${DELTASERVE_PYTHON}" "${root}/tools/vision/synth_dataset.py" \
  --out "${work}/val500" --split val --count 500 --seed 7 >/dev/null
echo
for m in padre-detector padre-softmax; do
  "${build}/server/deltaserve-detect-eval" --model "${root}/models/${m}" --coco "${work}/val500/instances_val.json" \
    --images "${work}/val500/images" --device "${device%%:*}"
done
