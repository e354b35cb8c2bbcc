#!/usr/bin/env bash
# Serving benchmark: the deltaserve server on a small random Qwen3.5 checkpoint, loaded by
# `deltaserve-cli bench` at concurrency 1, 4, 16 and 64; throughput and TTFT/TPOT/ITL/E2E percentiles,
# and the throughput ratio of continuous batching (--max-num-seqs 64) against the same server with
# batching disabled (--max-num-seqs 1), measured in the same run.
#   bench/serving.sh [--quick] [--device cpu|cuda] [--preset small|0.8b] [--threads N (server --threads)]
# Writes the JSON results to $TMPDIR/deltaserve-bench-serving/results.jsonl and prints a markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
quick=0 device=cpu preset=small threads=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --device) device="$2"; shift ;;
    --preset) preset="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench/serving.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
cmake --build "${build}" --target deltaserve deltaserve-cli >/dev/null
work="${TMPDIR:-/tmp}/deltaserve-bench-serving"
ckpt="${work}/${preset}"
mkdir -p "${work}"
[[ -f "${ckpt}/model.safetensors" ]] || "${DELTASERVE_PYTHON}" "${root}/tools/make_random_qwen35.py" "${preset}" "${ckpt}"
results="${work}/results.jsonl"
: > "${results}"
input_len=128 output_len=64 concurrencies=(1 4 16 64)
[[ ${quick} == 1 ]] && { input_len=32; output_len=16; concurrencies=(1 4 16); }

free_port() { "${DELTASERVE_PYTHON}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_server() {  # $1 = max-num-seqs; runs every concurrency against one server process
  local seqs="$1" port metrics pid
  port="$(free_port)"; metrics="$(free_port)"
  "${build}/server/deltaserve" --model "${ckpt}" --model-name bench --port "${port}" --metrics-port "${metrics}" \
    --device "${device}" --max-num-seqs "${seqs}" --max-queue 1024 --max-model-len 512 \
    --max-batched-tokens 512 --threads "${threads}" 2>"${work}/server-${seqs}.log" &
  pid=$!
  for _ in $(seq 1 120); do
    "${build}/client/deltaserve-cli" --server "127.0.0.1:${port}" health >/dev/null 2>&1 && break
    kill -0 "${pid}" 2>/dev/null || { cat "${work}/server-${seqs}.log" >&2; exit 1; }
    sleep 0.5
  done
  for c in "${concurrencies[@]}"; do
    local n=$(( c * 2 > 16 ? c * 2 : 16 ))
    echo "== max-num-seqs ${seqs}, concurrency ${c}, ${n} requests" >&2
    "${build}/client/deltaserve-cli" --server "127.0.0.1:${port}" bench --num-requests "${n}" --concurrency "${c}" \
      --input-len "${input_len}" --output-len "${output_len}" --range-ratio 0.25 --seed 1 \
      --result-json "${work}/r.json" >/dev/null 2>"${work}/client.log" || { cat "${work}/client.log" >&2; exit 1; }
    "${DELTASERVE_PYTHON}" -c 'import json,sys; r=json.load(open(sys.argv[1])); r["max_num_seqs"]=int(sys.argv[2]); print(json.dumps(r))' \
      "${work}/r.json" "${seqs}" >> "${results}"
  done
  kill -TERM "${pid}"; wait "${pid}"
}

run_server 64
run_server 1
"${DELTASERVE_PYTHON}" - "${results}" "${preset}" "${device}" "${threads}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nServing benchmark, preset {sys.argv[2]}, device {sys.argv[3]}, server --threads {sys.argv[4]} (times in ms)\n")
print("| concurrency | max-num-seqs | req/s | output tok/s | vs seqs 1 | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | E2E p50 | E2E p99 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    base = next(b for b in rows if b["max_num_seqs"] == 1 and b["max_concurrency"] == r["max_concurrency"])
    print(f"| {r['max_concurrency']} | {r['max_num_seqs']} | {r['request_throughput']:.2f} | {r['output_throughput']:.1f} | "
          f"{r['output_throughput'] / base['output_throughput']:.2f}x | {r['median_ttft_ms']:.1f} | {r['p99_ttft_ms']:.1f} | "
          f"{r['median_itl_ms']:.1f} | {r['p99_itl_ms']:.1f} | {r['median_e2el_ms']:.1f} | {r['p99_e2el_ms']:.1f} |")
PY
