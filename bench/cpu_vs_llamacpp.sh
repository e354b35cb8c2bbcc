#!/usr/bin/env bash
# CPU benchmark: deltaserve against llama.cpp on the same random checkpoint of Qwen3.5-0.8B's text dimensions,
# the same thread count, in one machine session, each figure at least twice, with ratios. Not run by CI
# (it builds llama.cpp and takes about 30 minutes on 2 cores). Everything it makes lives in the work folder
# (default .cache/cpu-bench, ignored by git).
#   bench/cpu_vs_llamacpp.sh [STAGE...]      stages, in order; default: llama prep decode serving table
#     llama    llama.cpp (llama-bench, llama-server, llama-quantize, llama-perplexity; CPU, -march=native) from
#              the llama-cpp-python sdist on PyPI (bench/anchors/prepare_llamacpp.sh) into WORK/llamacpp
#     prep     the checkpoint (tools/make_random_qwen35.py 0.8b, fp32, the real Qwen3 tokenizer) and its
#              GGUFs in f32 and bf16 (llama.cpp's own converter), q8_0 and q4_0 (llama-quantize)
#     decode   prefill of a PROMPT-token prompt and DECODE greedy tokens for each of WEIGHTS (fp32, bf16,
#              int8 / int4: deltaserve --weight-dtype int8 / int4 against llama.cpp's Q8_0 / Q4_0, the same
#              layouts): llama-bench (-p PROMPT -n DECODE)
#              and bench_model, alternated, REPS times each
#     serving  each server started once per weight dtype in SERVING_WEIGHTS and loaded by the same planned
#              requests (random prompt ids, EOS ignored, greedy) at every concurrency: deltaserve-cli bench
#              against deltaserve (gRPC), bench/anchors/lc_loadgen.py against llama-server
#     accuracy the shipped trained model (models/qwen35-small) in llama.cpp: GGUF f32 (llama.cpp's converter),
#              Q8_0, Q4_0 and Q4_K_M (llama-quantize); its held-out ids decoded to text (they re-tokenize to the
#              same ids); llama-perplexity -c 512 on the f32 model saving its logits, then on each quantized one
#              with --kl-divergence: perplexity change and top-1 agreement against f32, the figures
#              bench_accuracy --weights-only reports for deltaserve's int8 / int4 (also run here). Rows: what
#              accuracy, ppl, ppl_change_pct, top1_agreement (no tok_s)
#     table    the rows so far as tables with ratios (deltaserve / llama.cpp, medians)
# Rows: WORK/rows.jsonl, one JSON object per measurement: engine (deltaserve | llama.cpp), weights (fp32 |
# bf16 | int8 | q8_0 | int4 | q4_0), what (prefill | decode | serving), concurrency (serving), tok_s, rep, threads, and the source
# figures. Copy them to docs/data/bench_cpu_llamacpp_<date>.jsonl.
# Knobs (environment, defaults): THREADS=$(nproc) PROMPT=512 DECODE=128 REPS=2 CONCURRENCIES="1 4 8"
# WEIGHTS="fp32 bf16 int8" SERVING_WEIGHTS=fp32 SERVING_INPUT=512 SERVING_OUTPUT=128 PROMPTS_PER_CONC=2 WORK=.cache/cpu-bench
# BUILD=build (deltaserve's build folder: bench_model, deltaserve, deltaserve-cli). LLAMA_NO_AMX=1 builds
# llama.cpp without AMX code (-mno-amx-*), for VMs whose CPU lists AMX but whose kernel does not grant it
# (its Q8_0 path then dies with SIGILL); delete WORK/llamacpp/b to rebuild.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
# shellcheck source=scripts/env.sh
source scripts/env.sh
py="${DELTASERVE_PYTHON}"
threads="${THREADS:-$(nproc)}"
prompt="${PROMPT:-512}" decode="${DECODE:-128}" reps="${REPS:-2}"
concurrencies="${CONCURRENCIES:-1 4 8}" serving_weights="${SERVING_WEIGHTS:-fp32}" weights="${WEIGHTS:-fp32 bf16 int8}"
s_in="${SERVING_INPUT:-512}" s_out="${SERVING_OUTPUT:-128}" per_conc="${PROMPTS_PER_CONC:-2}"
work="$(realpath -m "${WORK:-.cache/cpu-bench}")"
build="$(realpath -m "${BUILD:-build}")"
lc="${work}/llamacpp" ckpt="${work}/ckpt-0.8b-fp32"
rows="${work}/rows.jsonl"
anchors="${root}/bench/anchors"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
today="$(date -u +%Y-%m-%d)"
mkdir -p "${work}"

say() { printf '[%5d s] %s\n' "${SECONDS}" "$*" >&2; }
gguf() { echo "${work}/0.8b-$1.gguf"; }  # $1 = f32 | bf16 | q8_0
# Our weights name -> llama.cpp's type for the same class of weights, and the activations' dtype.
# INT8 is llama.cpp's Q8_0 layout and int4 its Q4_0 (one scale per 32 values, both).
lc_type() { case "$1" in fp32) echo f32 ;; bf16) echo bf16 ;; int4) echo q4_0 ;; *) echo q8_0 ;; esac; }
lc_weights() { case "$1" in int8) echo q8_0 ;; int4) echo q4_0 ;; *) echo "$1" ;; esac; }
torch_dtype() { [[ "$1" == bf16 ]] && echo bfloat16 || echo float32; }
weight_dtype() { case "$1" in int8|int4) echo "$1" ;; *) echo same ;; esac; }

# Appends one row: key=value pairs (values that parse as JSON numbers stay numbers).
row() {
  "${py}" - "${rows}" "$@" <<'PY'
import json, sys
out, pairs = sys.argv[1], sys.argv[2:]
r = {}
for p in pairs:
    k, v = p.split("=", 1)
    try:
        r[k] = json.loads(v)
    except ValueError:
        r[k] = v
with open(out, "a") as f:
    f.write(json.dumps(r) + "\n")
PY
}
common() { echo "threads=${threads}" "date=${today}" "commit=${commit}" "cpu=${cpu// /_}"; }  # words: no spaces

stage_llama() {
  if [[ -x "${lc}/b/bin/llama-bench" && -x "${lc}/b/bin/llama-server" && -x "${lc}/b/bin/llama-quantize" ]]; then
    say "llama.cpp: built"; return
  fi
  local tarball="${root}/.cache/anchors/llamacpp.tar.xz"
  [[ -f "${tarball}" ]] || bench/anchors/prepare_llamacpp.sh "${tarball}"
  if [[ ! -f "${lc}/src/CMakeLists.txt" ]]; then
    rm -rf "${lc}/src.tmp" && mkdir -p "${lc}/src.tmp" && tar xJf "${tarball}" -C "${lc}/src.tmp" && mv "${lc}/src.tmp" "${lc}/src"
  fi
  say "llama.cpp: building llama-bench and llama-server (CPU, native) into ${lc}/b"
  local no_amx=()
  if [[ "${LLAMA_NO_AMX:-0}" == 1 ]]; then
    no_amx=("-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
      "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
  fi
  cmake -S "${lc}/src" -B "${lc}/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF "${no_amx[@]}" > "${work}/llama-build.log" 2>&1
  ninja -C "${lc}/b" llama-bench llama-server llama-quantize llama-perplexity >> "${work}/llama-build.log" 2>&1 ||
    { tail -30 "${work}/llama-build.log"; exit 1; }
  say "llama.cpp: built"
}

stage_prep() {
  if [[ ! -f "${ckpt}/model.safetensors" ]]; then
    say "prep: random 0.8b checkpoint (fp32) in ${ckpt}"
    rm -rf "${ckpt}.tmp"
    "${py}" tools/make_random_qwen35.py 0.8b "${ckpt}.tmp" --dtype float32 --tokenizer tests/data/qwen3-tokenizer
    mv "${ckpt}.tmp" "${ckpt}"
  fi
  local t
  for t in f32 bf16; do
    [[ -f "$(gguf "${t}")" ]] && continue
    say "prep: GGUF ${t}"
    PYTHONPATH="${lc}/src/gguf-py" "${py}" "${anchors}/convert_gguf.py" "${lc}/src" --pre qwen35 -- "${ckpt}" \
      --no-mtp --outtype "${t}" --outfile "$(gguf "${t}").tmp" > "${work}/convert-${t}.log" 2>&1 ||
      { tail -20 "${work}/convert-${t}.log"; exit 1; }
    mv "$(gguf "${t}").tmp" "$(gguf "${t}")"
  done
  local q
  for q in q8_0 q4_0; do
    [[ -f "$(gguf "${q}")" ]] && continue
    say "prep: GGUF ${q} (llama-quantize from f32)"
    "${lc}/b/bin/llama-quantize" "$(gguf f32)" "$(gguf "${q}").tmp" "${q^^}" > "${work}/quantize-${q}.log" 2>&1 ||
      { tail -20 "${work}/quantize-${q}.log"; exit 1; }
    mv "$(gguf "${q}").tmp" "$(gguf "${q}")"
  done
}

# llama-bench's pp and tg rows -> our rows.
llama_decode_once() {
  local w="$1" rep="$2" json
  json="$("${lc}/b/bin/llama-bench" -m "$(gguf "$(lc_type "${w}")")" -t "${threads}" -p "${prompt}" -n "${decode}" \
    -r 1 -o jsonl 2>/dev/null)"
  while IFS= read -r line; do
    [[ -z "${line}" ]] && continue
    local np nd ts
    np="$(jq -r .n_prompt <<<"${line}")" nd="$(jq -r .n_gen <<<"${line}")" ts="$(jq -r .avg_ts <<<"${line}")"
    local what=decode; (( np > 0 )) && what=prefill
    row engine=llama.cpp weights="$(lc_weights "${w}")" what="${what}" tok_s="${ts}" rep="${rep}" tokens="$(( np + nd ))" \
      command="llama-bench -t ${threads} -p ${prompt} -n ${decode} -r 1" $(common)
    say "llama.cpp ${w} ${what}: ${ts} tok/s"
  done <<<"${json}"
}

ds_decode_once() {
  local w="$1" rep="$2" json
  local cmd="bench_model --threads ${threads} --dtype $(torch_dtype "${w}") --weight-dtype $(weight_dtype "${w}") --prompt-len ${prompt} --decode ${decode} --state-dtype fp32"
  # shellcheck disable=SC2086
  json="$("${BENCH_MODEL:-${build}/bench/bench_model}" "${ckpt}" ${cmd#bench_model } 2>/dev/null | head -1)"
  local pf dc
  pf="$(jq -r .prefill_tok_s <<<"${json}")" dc="$(jq -r .decode_tok_s <<<"${json}")"
  row engine=deltaserve weights="${w}" what=prefill tok_s="${pf}" rep="${rep}" tokens="${prompt}" command="${cmd}" $(common)
  row engine=deltaserve weights="${w}" what=decode tok_s="${dc}" rep="${rep}" tokens="${decode}" command="${cmd}" $(common)
  say "deltaserve ${w}: prefill ${pf} tok/s, decode ${dc} tok/s"
}

stage_decode() {
  [[ -x "${build}/bench/bench_model" ]] || { say "decode: no ${build}/bench/bench_model (cmake --build build --target bench_model)"; exit 1; }
  local w rep
  for rep in $(seq 1 "${reps}"); do
    for w in ${weights}; do
      llama_decode_once "${w}" "${rep}"
      ds_decode_once "${w}" "${rep}"
    done
  done
}

stage_accuracy() {
  local small="${root}/models/qwen35-small" acc="${work}/accuracy" t
  mkdir -p "${acc}"
  [[ -f "${acc}/small-f32.gguf" ]] ||
    PYTHONPATH="${lc}/src/gguf-py" "${py}" "${anchors}/convert_gguf.py" "${lc}/src" --pre qwen35 -- "${small}" \
      --no-mtp --outtype f32 --outfile "${acc}/small-f32.gguf" > "${acc}/convert.log" 2>&1 ||
    { tail -20 "${acc}/convert.log"; exit 1; }
  for t in q8_0 q4_0 q4_k_m; do
    [[ -f "${acc}/small-${t}.gguf" ]] ||
      "${lc}/b/bin/llama-quantize" "${acc}/small-f32.gguf" "${acc}/small-${t}.gguf" "${t^^}" > "${acc}/quantize-${t}.log" 2>&1 ||
      { tail -20 "${acc}/quantize-${t}.log"; exit 1; }
  done
  "${py}" - "${small}" "${acc}/heldout.txt" <<'PY'
import sys
import numpy as np
import tokenizers
model, out = sys.argv[1], sys.argv[2]
ids = np.fromfile(f"{model}/heldout_tokens.u16", dtype=np.uint16).astype(int).tolist()
tok = tokenizers.Tokenizer.from_file(f"{model}/tokenizer.json")
text = tok.decode(ids, skip_special_tokens=False)
again = tok.encode(text, add_special_tokens=False).ids
if again != ids:
    sys.exit(f"accuracy: the held-out text does not re-tokenize to its ids ({len(again)} against {len(ids)})")
open(out, "w").write(text)
PY
  local lp="${lc}/b/bin/llama-perplexity" base_ppl
  "${lp}" -m "${acc}/small-f32.gguf" -f "${acc}/heldout.txt" -c 512 -t "${threads}" \
    --kl-divergence-base "${acc}/f32.kld" > "${acc}/ppl-f32.log" 2>&1 || { tail -20 "${acc}/ppl-f32.log"; exit 1; }
  base_ppl="$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "${acc}/ppl-f32.log")"
  row engine=llama.cpp weights=fp32 what=accuracy ppl="${base_ppl}" ppl_change_pct=0 top1_agreement=1 \
    command="llama-perplexity -c 512 (32 chunks of 512, the second half of each scored)" $(common)
  for t in q8_0 q4_0 q4_k_m; do
    "${lp}" -m "${acc}/small-${t}.gguf" -c 512 -t "${threads}" --kl-divergence-base "${acc}/f32.kld" \
      --kl-divergence > "${acc}/ppl-${t}.log" 2>&1 || { tail -20 "${acc}/ppl-${t}.log"; exit 1; }
    local ppl ratio same
    ppl="$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p' "${acc}/ppl-${t}.log")"
    ratio="$(sed -n 's/^Mean PPL(Q)\/PPL(base) *: *\([0-9.]*\).*/\1/p' "${acc}/ppl-${t}.log")"
    same="$(sed -n 's/^Same top p *: *\([0-9.]*\).*/\1/p' "${acc}/ppl-${t}.log")"
    row engine=llama.cpp weights="${t}" what=accuracy ppl="${ppl}" \
      ppl_change_pct="$("${py}" -c "print(round(($ratio - 1) * 100, 4))")" \
      top1_agreement="$("${py}" -c "print(round($same / 100, 5))")" \
      command="llama-perplexity -c 512 --kl-divergence" $(common)
    say "llama.cpp ${t}: ppl ${ppl} (x${ratio} of f32), same top-1 ${same}%"
  done
  "${build}/bench/bench_accuracy" "${small}" --windows 32 --threads "${threads}" --weights-only 2>&1 |
    grep '^{' > "${acc}/deltaserve.jsonl"
  "${py}" - "${acc}/deltaserve.jsonl" "${rows}" "$(common)" <<'PY'
import json, sys
src, out, common = sys.argv[1], sys.argv[2], dict(kv.split("=", 1) for kv in sys.argv[3].split())
with open(out, "a") as f:
    for line in open(src):
        r = json.loads(line)
        v = r["variant"]  # "weights int8" | "weights int4" | the float32 baseline's inverse method
        weights = v[len("weights "):] if v.startswith("weights ") else "fp32"
        f.write(json.dumps({"engine": "deltaserve", "weights": weights, "what": "accuracy", "path": r["path"],
                            "ppl": r["ppl"], "ppl_change_pct": r["ppl_change_pct"],
                            "top1_agreement": r["top1_agreement"],
                            "command": "bench_accuracy --windows 32 --weights-only (32 windows of 513, every position scored)",
                            **common}) + "\n")
PY
  say "accuracy: rows appended to ${rows}"
}

free_port() { "${py}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
server_pid=""
stop_server() {
  [[ -n "${server_pid}" ]] || return 0
  kill -TERM "${server_pid}" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "${server_pid}" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "${server_pid}" 2>/dev/null || true
  wait "${server_pid}" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT
wait_ready() {  # $1 = log; the rest: a probe
  local log="$1"; shift
  for _ in $(seq 1 240); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "${server_pid}" 2>/dev/null || { tail -20 "${log}"; return 1; }
    sleep 1
  done
  tail -20 "${log}"; return 1
}

serving_rows() {  # $1 engine, $2 weights, $3 concurrency, $4 prompts, $5 result JSON, $6 rep, $7 flags
  local res="$5"
  [[ -s "${res}" ]] || { say "$1 $2 c=$3: no result"; return 0; }
  local tok ttft tpot
  tok="$(jq -r .output_throughput "${res}")" ttft="$(jq -r .median_ttft_ms "${res}")" tpot="$(jq -r .median_tpot_ms "${res}")"
  row engine="$1" weights="$2" what=serving concurrency="$3" tok_s="${tok}" rep="$6" num_prompts="$4" \
    input_len="${s_in}" output_len="${s_out}" median_ttft_ms="${ttft}" median_tpot_ms="${tpot}" \
    completed="$(jq -r .completed "${res}")" failed="$(jq -r .failed "${res}")" server_flags="$7" $(common)
  say "$1 $2 c=$3 rep $6: ${tok} output tok/s, TTFT p50 ${ttft} ms, TPOT p50 ${tpot} ms"
}

stage_serving() {
  local cmax=1 c w rep port flags n res
  for c in ${concurrencies}; do (( c > cmax )) && cmax=${c}; done
  for w in ${serving_weights}; do
    # deltaserve
    port="$(free_port)"
    flags="--device cpu --dtype $(torch_dtype "${w}") --weight-dtype $(weight_dtype "${w}") --threads ${threads} --max-num-seqs ${cmax} --max-model-len $(( s_in + s_out + 64 ))"
    # shellcheck disable=SC2086
    "${build}/server/deltaserve" --model "${ckpt}" --host 127.0.0.1 --port "${port}" --metrics-port 0 ${flags} \
      > "${work}/deltaserve-${w}.log" 2>&1 &
    server_pid=$!
    wait_ready "${work}/deltaserve-${w}.log" "${build}/client/deltaserve-cli" --server "127.0.0.1:${port}" health ||
      { say "deltaserve did not start"; exit 1; }
    for rep in $(seq 1 "${reps}"); do
      for c in ${concurrencies}; do
        n=$(( per_conc * c )); res="${work}/result.json"; rm -f "${res}"
        "${build}/client/deltaserve-cli" --server "127.0.0.1:${port}" bench --num-requests "${n}" --concurrency "${c}" \
          --input-len "${s_in}" --output-len "${s_out}" --range-ratio 0 --seed "${rep}" --temperature 0 \
          --result-json "${res}" > /dev/null 2>> "${work}/client.err" || true
        serving_rows deltaserve "${w}" "${c}" "${n}" "${res}" "${rep}" "${flags}"
      done
    done
    stop_server
    # llama.cpp: one slot per concurrent request, each with the request's context.
    port="$(free_port)"
    flags="-t ${threads} -tb ${threads} -np ${cmax} -c $(( cmax * (s_in + s_out + 64) ))"
    # shellcheck disable=SC2086
    "${lc}/b/bin/llama-server" -m "$(gguf "$(lc_type "${w}")")" --host 127.0.0.1 --port "${port}" ${flags} \
      > "${work}/llama-server-${w}.log" 2>&1 &
    server_pid=$!
    wait_ready "${work}/llama-server-${w}.log" curl -sf "http://127.0.0.1:${port}/health" ||
      { say "llama-server did not start"; exit 1; }
    for rep in $(seq 1 "${reps}"); do
      for c in ${concurrencies}; do
        n=$(( per_conc * c )); res="${work}/result.json"; rm -f "${res}"
        "${py}" "${anchors}/lc_loadgen.py" "${port}" "${n}" "${c}" "${s_in}" "${s_out}" "${rep}" --timeout 1800 \
          --result-json "${res}" > /dev/null 2>> "${work}/client.err" || true
        serving_rows llama.cpp "$(lc_weights "${w}")" "${c}" "${n}" "${res}" "${rep}" "${flags}"
      done
    done
    stop_server
  done
}

stage_table() {
  "${py}" - "${rows}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
CLASS = {"fp32": "fp32", "bf16": "bf16", "int8": "int8 | q8_0", "q8_0": "int8 | q8_0", "int4": "int4 | q4_0",
         "q4_0": "int4 | q4_0"}
def key(r):
    return (CLASS.get(r["weights"], r["weights"]), r["what"], r.get("concurrency", 0))
groups = {}
for r in rows:
    if "tok_s" in r:
        groups.setdefault(key(r), {}).setdefault(r["engine"], []).append(r["tok_s"])
print(f"{'weights':11} {'what':8} {'conc':>4} {'llama.cpp tok/s':>22} {'deltaserve tok/s':>22} {'ratio (medians)':>15}")
for k in sorted(groups):
    g = groups[k]
    lc, ds = g.get("llama.cpp", []), g.get("deltaserve", [])
    fmt = lambda v: " / ".join(f"{x:.2f}" for x in v) or "-"
    ratio = f"{statistics.median(ds) / statistics.median(lc):.2f}x" if lc and ds else "-"
    print(f"{k[0]:11} {k[1]:8} {k[2] or '':>4} {fmt(lc):>22} {fmt(ds):>22} {ratio:>15}")
acc = [r for r in rows if r["what"] == "accuracy"]
if acc:
    print(f"\n{'engine':10} {'weights':8} {'path':8} {'ppl':>9} {'vs fp32':>9} {'top-1':>7}")
    for r in acc:
        print(f"{r['engine']:10} {r['weights']:8} {r.get('path', ''):8} {r['ppl']:9.4f} "
              f"{r['ppl_change_pct']:+8.3f}% {r['top1_agreement']:7.4f}")
PY
}

stages=("$@")
(( ${#stages[@]} )) || stages=(llama prep decode serving table)
command -v jq >/dev/null || { echo "cpu_vs_llamacpp: needs jq (apt-get install jq)" >&2; exit 1; }
say "threads ${threads}, ${cpu}, commit ${commit}, rows -> ${rows}"
for s in "${stages[@]}"; do
  case "${s}" in
    llama|prep|decode|serving|accuracy|table) "stage_${s}" ;;
    -h|--help|help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "cpu_vs_llamacpp: unknown stage ${s} (llama prep decode serving accuracy table)" >&2; exit 2 ;;
  esac
done
