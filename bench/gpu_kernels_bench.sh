#!/usr/bin/env bash
# The kernel tables of docs/kernels.md on the lent GPU, in one machine session: deltaserve's
# bench_kernels (fused prefill, ATen composition baseline, decode per state dtype with the general kernel
# and a device copy as baselines), FLA's kernels on the same shapes (bench/anchors/fla_compare.py, the
# fla-core wheels carried in .whl/), and bench_model on a random checkpoint with Qwen3.5-0.8B's text
# dimensions (prefill repeated and profiled, decode with fp32 and int8 state). Needs a built or unpacked
# build-gpu/ (scripts/gpu_bundle.sh). Each stage has its own time limit; what a limit cuts is said in
# its log. Everything lands in $OUT (or ./gpu-out).
#   bench/gpu_kernels_bench.sh [STAGES]      STAGES: any of kernels fla model prefill-ab ncu
#                                            (default: kernels fla model)
#   prefill-ab  the fused prefill only, this build against KB_BASELINE (another build's bench_kernels),
#               alternated KB_AB_ROUNDS times, one sequence of each KB_SEQ and packed sequences of
#               KB_SEQ_LEN tokens (a serving step's shape)
#   ncu         Nsight Compute's speed-of-light, occupancy, launch and warp-stall sections of the three
#               bf16 prefill kernels at the packed shape (ncu_prefill.txt)
# Environment: KB_SEQ (4096,16384,65536), KB_BATCHES (1,16,64,256), KB_COMPOSITION_MAX_SEQ (4096),
#   KB_INVERSE (0; 1 adds the inverse table), KB_KERNELS_TIMEOUT_S (200 per bench_kernels run),
#   KB_FLA_TIMEOUT_S (240), KB_MODEL_TIMEOUT_S (150 per bench_model run), KB_SEQ_LEN (512),
#   KB_BASELINE (unset: prefill-ab times this build alone), KB_AB_ROUNDS (2), KB_FLA_PROFILE (set: FLA's
#   bf16 prefill per kernel too).
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

if [[ " ${stages} " == *" prefill-ab "* ]]; then
  # Same binary arguments for both builds; each row says which build ran it ("build": "new" or "baseline").
  : > "${out}/prefill_ab.jsonl"
  for round in $(seq "${KB_AB_ROUNDS:-2}"); do
    for side in new baseline; do
      bin="${build}/bench/bench_kernels"
      if [[ "${side}" == baseline ]]; then
        [[ -n "${KB_BASELINE:-}" ]] || continue
        bin="${KB_BASELINE}"
      fi
      for packed in 0 "${KB_SEQ_LEN:-512}"; do
        # One sequence without the flag, so that builds older than --seq-len run it too.
        # shellcheck disable=SC2046  # the flag pair or nothing
        timeout "${KB_KERNELS_TIMEOUT_S:-200}" "${bin}" --device cuda --no-decode --no-inverse \
          --seq "${KB_SEQ:-4096,16384,65536}" $( ((packed > 0)) && echo --seq-len "${packed}") --reps 10 \
          --composition-max-seq 1 \
          2> "${out}/prefill_ab.err" | grep '^{' | grep '"kernel":"fused"' |
          sed "s/^{/{\"build\":\"${side}\",\"round\":${round},\"packed\":${packed},/" >> "${out}/prefill_ab.jsonl" ||
          echo "prefill-ab ${side} round ${round} packed ${packed}: failed or cut (prefill_ab.err)"
      done
    done
  done
  "${py}" - "${out}/prefill_ab.jsonl" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = collections.defaultdict(list)
for r in rows:
    by[(r["T"], r["packed"], r["dtype"], r["method"], r["build"])].append(r["ms"])
print(f"{'T':>6} {'seq_len':>7} {'dtype':9} {'method':13} {'new ms':>9} {'base ms':>9} {'base/new':>8}")
for key in sorted({k[:4] for k in by}):
    new, base = by.get(key + ("new",), []), by.get(key + ("baseline",), [])
    n = statistics.median(new) if new else float("nan")
    b = statistics.median(base) if base else float("nan")
    print(f"{key[0]:>6} {key[1] or key[0]:>7} {key[2]:9} {key[3]:13} {n:9.3f} {b:9.3f} {b / n:8.2f}")
PY
fi

if [[ " ${stages} " == *" ncu "* ]]; then
  # The first launches of the prefill's kernels at T = 16k packed as sequences of KB_NCU_SEQ_LEN (default
  # KB_SEQ_LEN); clocks left as they are. Only the bf16 kernels at Qwen3.5's shape match (PrepareKernelBf16,
  # StateKernelRegs or, in builds before it, StateKernelBf16, OutputKernelBf16): KB_NCU_LAUNCHES (3) takes
  # the first bf16 prefill's three.
  timeout "${KB_NCU_TIMEOUT_S:-240}" ncu --clock-control none --kernel-name-base function \
    --kernel-name 'regex:^(PrepareKernelBf16|StateKernelBf16|StateKernelRegs|OutputKernelBf16)$' \
    --launch-count "${KB_NCU_LAUNCHES:-3}" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    "${build}/bench/bench_kernels" --device cuda --no-decode --no-inverse --seq 16384 \
    --seq-len "${KB_NCU_SEQ_LEN:-${KB_SEQ_LEN:-512}}" --reps 2 --composition-max-seq 1 > "${out}/ncu_prefill.txt" 2>&1 ||
    echo "ncu: exit $? (ncu_prefill.txt)"
  grep -E "Kernel<|StateKernel|Duration|Achieved Occupancy|Registers Per|Shared Memory Config|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Warp Cycles Per Issued|Block Limit" \
    "${out}/ncu_prefill.txt" | head -60
fi

if [[ " ${stages} " == *" fla "* ]]; then
  site=/tmp/fla-site
  if "${py}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${site}" \
      "${root}"/.whl/*.whl > "${out}/fla_install.log" 2>&1; then
    # Triton compiles each kernel on first use: the first shapes pay minutes of JIT.
    OUT="${out}" PYTHONPATH="${site}" timeout "${KB_FLA_TIMEOUT_S:-240}" "${py}" "${root}/bench/anchors/fla_compare.py" \
      --seq "${KB_SEQ:-4096,16384,65536}" --batches "${KB_BATCHES:-1,16,64,256}" ${KB_FLA_PROFILE:+--profile} \
      > "${out}/fla.txt" 2>&1 ||
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
  # The second run is a serving step's prefill: 16 prompts of 512 tokens in one pass, profiled once.
  for args in "--state-dtype fp32 --prefill-reps 5 --profile-prefill 1" \
      "--state-dtype fp32 --batch 16 --decode 8 --prefill-reps 5 --profile-prefill 1" "--state-dtype int8" \
      "--state-dtype fp32 --batch 64 --decode 64" "--state-dtype int8 --batch 64 --decode 64"; do
    # shellcheck disable=SC2086  # args is a flag list
    timeout "${KB_MODEL_TIMEOUT_S:-150}" "${build}/bench/bench_model" "${ck}" --device cuda --dtype bfloat16 \
      --prompt-len 512 --decode 128 ${args} 2>> "${out}/bench_model.err" | grep '^{' >> "${out}/bench_model.jsonl" ||
      echo "bench_model ${args}: failed or cut (bench_model.err)"
  done
  cat "${out}/bench_model.jsonl" | cut -c1-400
fi
