#!/usr/bin/env bash
# Vision benchmark: PADRe vs softmax detector forward latency and images/s at 256, 1024 and 4096 tokens,
# batch 1 and 8 (random-weight models of the shipped shape), then the shipped models' accuracy side by
# side (deltaserve-detect-eval on the held-out set).   bench/vision.sh [--device cpu|cuda]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
device="cpu"
[[ "${1:-}" == "--device" ]] && device="$2"
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
cmake --build "${build}" --target bench_vision deltaserve-detect-eval >/dev/null
work="${TMPDIR:-/tmp}/deltaserve-bench-vision"
"${DELTASERVE_PYTHON}" "${root}/bench/make_vision_bench_models.py" "${work}/models"
"${build}/bench/bench_vision" "${work}/models" --device "${device}"
[[ -f "${work}/val500/instances_val.json" ]] || "${DELTASERVE_PYTHON}" "${root}/tools/vision/synth_dataset.py" \
  --out "${work}/val500" --split val --count 500 --seed 7 >/dev/null
echo
for m in padre-detector padre-softmax; do
  "${build}/server/deltaserve-detect-eval" --model "${root}/models/${m}" --coco "${work}/val500/instances_val.json" \
    --images "${work}/val500/images"
done
