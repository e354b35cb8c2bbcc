#!/usr/bin/env bash
# Model benchmark: deltaserve vs transformers on the same random Qwen3.5 checkpoints (small, and the
# 0.8B text dimensions), same threads, CPU; prefill and decode tokens/s and peak RSS, with ratios.
#   scripts/bench_model.sh [PROMPT_LEN=256] [DECODE=16]     (writes checkpoints under $TMPDIR)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
prompt_len="${1:-256}"
decode="${2:-16}"
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
cmake --build "${build}" --target bench_model >/dev/null
work="${TMPDIR:-/tmp}/deltaserve-bench-model"
mkdir -p "${work}"
results="${work}/results.jsonl"
: > "${results}"
for preset in small 0.8b; do
  dir="${work}/${preset}"
  [[ -f "${dir}/model.safetensors" ]] || "${DELTASERVE_PYTHON}" "${root}/tools/make_random_qwen35.py" "${preset}" "${dir}"
  for state in fp32 int8; do
    "${build}/bench/bench_model" "${dir}" --prompt-len "${prompt_len}" --decode "${decode}" --state-dtype "${state}" \
      2>/dev/null | sed "s/^{/{\"preset\": \"${preset}\", /" | tee -a "${results}"
  done
  "${DELTASERVE_PYTHON}" "${root}/tools/bench_transformers_qwen35.py" "${dir}" --prompt-len "${prompt_len}" \
    --decode "${decode}" 2>/dev/null | sed "s/^{/{\"preset\": \"${preset}\", /" | tee -a "${results}"
done
"${DELTASERVE_PYTHON}" - "${results}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{'preset':6} {'engine':12} {'state':5} {'prefill tok/s':>14} {'vs hf':>6} {'decode tok/s':>13} {'vs hf':>6} {'peak RSS MB':>12}")
for preset in ("small", "0.8b"):
    hf = next(r for r in rows if r["preset"] == preset and r["engine"] == "transformers")
    for r in (r for r in rows if r["preset"] == preset):
        print(f"{preset:6} {r['engine']:12} {r.get('state', '-'):5} {r['prefill_tok_s']:14.1f} "
              f"{r['prefill_tok_s'] / hf['prefill_tok_s']:6.2f} {r['decode_tok_s']:13.2f} "
              f"{r['decode_tok_s'] / hf['decode_tok_s']:6.2f} {r['peak_rss_mb']:12.0f}")
PY
