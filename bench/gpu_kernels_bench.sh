#!/usr/bin/env bash
# The kernel tables of docs/kernels.md on the lent GPU, in one machine session: deltaserve's
# bench_kernels (fused prefill, ATen composition baseline, decode per state dtype with the general kernel
# and a device copy as baselines), FLA's kernels on the same shapes (bench/anchors/fla_compare.py, the
# fla-core wheels carried in .whl/), and bench_model on a random checkpoint with Qwen3.5-0.8B's text
# dimensions (prefill repeated and profiled, decode with fp32 and int8 state). Needs a built or unpacked
# build-gpu/ (scripts/gpu_bundle.sh). Each stage has its own time limit; what a limit cuts is said in
# its log. Everything lands in $OUT (or ./gpu-out).
#   bench/gpu_kernels_bench.sh [STAGES]      STAGES: any of kernels fla model (default: all three)
# Environment: KB_SEQ (4096,16384,65536), KB_BATCHES (1,16,64,256), KB_COMPOSITION_MAX_SEQ (4096),
#   KB_INVERSE (0; 1 adds the inverse table), KB_KERNELS_TIMEOUT_S (200 per bench_kernels run),
#   KB_FLA_TIMEOUT_S (240), KB_MODEL_TIMEOUT_S (150 per bench_model run).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-${root}/gpu-out}"
mkdir -p "${out}"
stages="${1:-kernels fla model}"
# shellcheck source=../scripts/gpu_env.sh
source "${root}/scripts/gpu_env.sh" "${root}/.debs" || exit 1
build="${GPU_BUILD}"
py="${PYTHON:-python3}"
commit="$(cat "${build}/lib/.bundle" 2>/dev/null || git -C "${root}" rev-parse --short HEAD)"
echo "gpu_kernels_bench: commit ${commit}, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" |
  tee "${out}/kernels_session.txt"

if [[ " ${stages} " == *" kernels "* ]]; then
  # Decode first (seconds), then prefill; the inverse table (its float64 reference is built on the CPU,
  # minutes at 64k) only with KB_INVERSE=1.
  timeout "${KB_KERNELS_TIMEOUT_S:-200}" "${build}/bench/bench_kernels" --device cuda --no-inverse --no-prefill \
    --batches "${KB_BATCHES:-1,16,64,256}" --reps 10 > "${out}/bench_kernels.txt" 2>&1 ||
    echo "bench_kernels decode: exit $? (124: cut by KB_KERNELS_TIMEOUT_S)" | tee -a "${out}/bench_kernels.txt"
  # shellcheck disable=SC2046  # the flag is one word or none
  timeout "${KB_KERNELS_TIMEOUT_S:-200}" "${build}/bench/bench_kernels" --device cuda --no-decode \
    $([[ "${KB_INVERSE:-0}" == 1 ]] || echo --no-inverse) --seq "${KB_SEQ:-4096,16384,65536}" --reps 10 \
    --composition-max-seq "${KB_COMPOSITION_MAX_SEQ:-4096}" >> "${out}/bench_kernels.txt" 2>&1 ||
    echo "bench_kernels prefill: exit $? (124: cut by KB_KERNELS_TIMEOUT_S)" | tee -a "${out}/bench_kernels.txt"
  grep -v '^{' "${out}/bench_kernels.txt"
fi

if [[ " ${stages} " == *" fla "* ]]; then
  site=/tmp/fla-site
  if "${py}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${site}" \
      "${root}"/.whl/*.whl > "${out}/fla_install.log" 2>&1; then
    # Triton compiles each kernel on first use: the first shapes pay minutes of JIT.
    OUT="${out}" PYTHONPATH="${site}" timeout "${KB_FLA_TIMEOUT_S:-240}" "${py}" "${root}/bench/anchors/fla_compare.py" \
      --seq "${KB_SEQ:-4096,16384,65536}" --batches "${KB_BATCHES:-1,16,64,256}" > "${out}/fla.txt" 2>&1 ||
      echo "fla_compare: exit $? (124: cut by KB_FLA_TIMEOUT_S)" | tee -a "${out}/fla.txt"
    tail -n 20 "${out}/fla.txt"
  else
    echo "fla: the wheels in .whl/ did not install (fla_install.log)"
  fi
fi

if [[ " ${stages} " == *" model "* ]]; then
  ck=/tmp/ds-0.8b
  if [[ ! -f "${ck}/config.json" ]]; then
    "${py}" "${root}/bench/anchors/make_random_ckpt.py" 0.8b "${ck}" --dtype bfloat16 --device cuda \
      > "${out}/ckpt.log" 2>&1 || { tail -5 "${out}/ckpt.log"; exit 1; }
  fi
  : > "${out}/bench_model.jsonl"
  # 512-token prompt then 128 decode steps, as issue 11's load; prefill 5 times and profiled once.
  for args in "--state-dtype fp32 --prefill-reps 5 --profile-prefill 1" "--state-dtype int8" \
      "--state-dtype fp32 --batch 64 --decode 64" "--state-dtype int8 --batch 64 --decode 64"; do
    # shellcheck disable=SC2086  # args is a flag list
    timeout "${KB_MODEL_TIMEOUT_S:-150}" "${build}/bench/bench_model" "${ck}" --device cuda --dtype bfloat16 \
      --prompt-len 512 --decode 128 ${args} 2>> "${out}/bench_model.err" | grep '^{' >> "${out}/bench_model.jsonl" ||
      echo "bench_model ${args}: failed or cut (bench_model.err)"
  done
  cat "${out}/bench_model.jsonl" | cut -c1-400
fi
