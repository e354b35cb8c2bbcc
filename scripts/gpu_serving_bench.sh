#!/usr/bin/env bash
# GPU serving benchmark: deltaserve against llama.cpp's llama-server on the same random Qwen3.5 checkpoints
# (0.8B and 9B text dimensions, bf16), 512 random prompt ids -> 128 tokens with EOS ignored, at concurrency
# 1, 16, 64 and 128, on the lent H200. One stage per device call, each well inside its 10 minutes; the warm
# machine keeps build-gpu/ and build-gpu-sysroot/ between calls. Run from the repo root with OUT set (the
# device tool sets it). docs/serving.md, "GPU serving benchmark (H200)", says which call carries what.
#   scripts/gpu_serving_bench.sh build     deltaserve + deltaserve-cli into build-gpu/ (needs .debs; skipped
#                                          when built, e.g. by scripts/gpu_check.sh)
#   scripts/gpu_serving_bench.sh llama     llama.cpp (llama-server, llama-bench; CUDA sm_90) from
#                                          .cache/anchors/llamacpp.tar.xz into build-gpu/llamacpp; meanwhile
#                                          the checkpoints and GGUFs of BENCH_PREP_PRESETS (default 0.8b 9b)
#   scripts/gpu_serving_bench.sh 0.8b|9b   checkpoint + GGUF where missing, llama-bench, then each server started
#                                          once and loaded at every concurrency; rows -> $OUT/bench_serving_h200.jsonl
#   scripts/gpu_serving_bench.sh prep P..  only the checkpoints + GGUFs of presets P..
#   scripts/gpu_serving_bench.sh table     the tables of every row measured on this machine so far
# $OUT gets: bench_serving_h200.jsonl (every row so far on this machine), llama_bench.jsonl, stage.log,
# servers.log (the servers' logs, concatenated), build.log, prep.log. A stage starts no run that could end
# past BENCH_BUDGET_S; runs it skips are listed, and the same stage run again (e.g. BENCH_SERVERS=llama.cpp
# BENCH_CONCURRENCIES="64 128") measures only those. GPU_BENCH_DRY=1 prints the commands and invents rows
# (no GPU, no binaries needed). Knobs, environment variables with their defaults, are in the block below.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}" || exit 1

dry="${GPU_BENCH_DRY:-0}"
out="${OUT:-${root}/gpu-out}"
build="${GPU_BUILD:-${root}/build-gpu}"
concurrencies="${BENCH_CONCURRENCIES:-1 16 64 128}"
servers="${BENCH_SERVERS:-deltaserve llama.cpp}"
input_len="${BENCH_INPUT_LEN:-512}" output_len="${BENCH_OUTPUT_LEN:-128}"
# Prompts per run: max(per_conc * concurrency, min), at most max (c=128 then runs 2 waves of 128).
per_conc="${BENCH_PROMPTS_PER_CONC:-4}" min_prompts="${BENCH_MIN_PROMPTS:-16}" max_prompts="${BENCH_MAX_PROMPTS:-256}"
budget="${BENCH_BUDGET_S:-540}"           # seconds from the stage's start; nothing starts that could run past it
run_timeout="${BENCH_RUN_TIMEOUT_S:-200}" # one load run at most (also capped by what is left of the budget)
min_run="${BENCH_MIN_RUN_S:-25}"          # a run is not started with less than this left
start_timeout="${BENCH_START_TIMEOUT_S:-240}"  # a server's load (the 9B reads 18 GB)
warmup="${BENCH_WARMUP:-1}"               # untimed burst at the largest concurrency before the runs (8 tokens)
max_seqs="${BENCH_MAX_NUM_SEQS:-128}" ctx_per_slot="${BENCH_CTX_PER_SLOT:-704}"
device="${BENCH_DEVICE:-cuda}" dtype="${BENCH_DTYPE:-bfloat16}"
ds_batched="${DS_MAX_BATCHED_TOKENS:-}"  # "": the server's default (8192 on CUDA); 2048 = llama-server's -b
ds_extra="${DS_EXTRA_FLAGS:-}" lc_extra="${LC_EXTRA_FLAGS:-}"
prep_presets="${BENCH_PREP_PRESETS:-0.8b 9b}"
tarball="${LLAMACPP_TARBALL:-${root}/.cache/anchors/llamacpp.tar.xz}"
debs="${DEB_DIR:-${root}/.debs}"
tokenizer="${BENCH_TOKENIZER:-${root}/tests/data/qwen3-tokenizer}"
py="${BENCH_PYTHON:-python3}"
jobs="${BENCH_JOBS:-$(nproc)}"
lc="${build}/llamacpp"
llama_server="${LLAMA_SERVER:-${lc}/b/bin/llama-server}" llama_bench="${LLAMA_BENCH:-${lc}/b/bin/llama-bench}"
ds_build="${DELTASERVE_BUILD:-${build}}"  # where server/deltaserve and client/deltaserve-cli are
ds_server="${ds_build}/server/deltaserve" ds_cli="${ds_build}/client/deltaserve-cli"
anchors="${root}/bench/anchors"
work="${build}/serving-bench"; [[ "${dry}" == 1 ]] && work="${build}/serving-bench-dry"
rows="${work}/rows.jsonl" lcrows="${work}/llama_bench.jsonl"
stage="${1:-help}"; shift || true

if [[ "${stage}" == help || "${stage}" == -h || "${stage}" == --help ]]; then
  awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0
fi
mkdir -p "${out}" "${work}"
if [[ -z "${GPU_BENCH_CHILD:-}" ]]; then exec > >(tee -a "${out}/stage.log") 2>&1; fi
exec 3>&1  # x prints here, also where a command's own output is redirected

say() { printf '[%4d s] %s\n' "${SECONDS}" "$*"; }
left() { echo $(( budget - SECONDS )); }
# Prints a command; runs it unless dry.
x() { printf '+ %s\n' "$*" >&3; [[ "${dry}" == 1 ]] || "$@"; }
# Starts a server in the background, output to $1; server_pid is its own pid (not a subshell's), so
# stop_server ends the server itself.
start_server() {
  local log="$1"; shift
  printf '+ %s\n' "$*" >&3
  server_pid=""
  [[ "${dry}" == 1 ]] && return 0
  "$@" > "${log}" 2>&1 &
  server_pid=$!
}
commit="${DELTASERVE_COMMIT:-$(git -C "${root}" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
today="$(date -u +%Y-%m-%d)"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"; gpu="${gpu:-no GPU}"

server_pid=""
cleanup() { [[ -n "${server_pid}" ]] && kill -KILL "${server_pid}" 2>/dev/null; return 0; }
trap cleanup EXIT

free_port() { "${py}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The Debian libraries deltaserve was linked against (scripts/gpu_env.sh unpacks them once per machine),
# for deltaserve's processes only: python and llama.cpp keep the machine's own environment.
ds_ld=""
ds_env() {
  if [[ -z "${ds_ld}" ]]; then
    ds_ld="$(GPU_BUILD="${build}" bash -c 'source scripts/gpu_env.sh "$1" >/dev/null && echo "${LD_LIBRARY_PATH}"' _ "${debs}")" ||
      { say "deltaserve: no Debian libraries (carry .debs in this call)"; return 1; }
  fi
}

build_deltaserve() {
  if [[ -x "${ds_server}" && -x "${ds_cli}" && "${BENCH_REBUILD:-0}" != 1 ]]; then
    say "deltaserve: built (${ds_server}); BENCH_REBUILD=1 rebuilds"; return 0
  fi
  say "deltaserve: building deltaserve and deltaserve-cli into ${ds_build} (log: build.log)"
  [[ "${dry}" == 1 ]] && { x cmake --build "${ds_build}" -j "${jobs}" --target deltaserve deltaserve-cli; return 0; }
  local t0=${SECONDS}
  ( # shellcheck source=scripts/gpu_env.sh
    export GPU_BUILD="${ds_build}"
    source scripts/gpu_env.sh "${debs}" || exit 1
    if [[ ! -f "${ds_build}/build.ninja" ]]; then
      # What the RPC build finds outside the .debs, on the machine: OpenSSL and zlib (gRPC's pkg-config),
      # CURL and zlib (prometheus-cpp's CMake config), libpng and libjpeg (server/vision).
      gpu_configure -DDELTASERVE_WITH_RPC=ON >> "${out}/build.log" 2>&1 || {
        grep -E "Could NOT find|not found|No package|CMake Error" -A2 "${out}/build.log" | head -30
        echo "gpu_serving_bench: the RPC build did not configure (above); deltaserve cannot be built here"
        rm -rf "${ds_build}/build.ninja"; exit 1; }
    fi
    cmake --build "${ds_build}" -j "${jobs}" --target deltaserve deltaserve-cli >> "${out}/build.log" 2>&1 ||
      { grep -E "error|FAILED|unknown target" "${out}/build.log" | head -30; exit 1; }
    ldd "${ds_server}" "${ds_cli}" | grep "not found" && exit 1
    true
  ) || { say "deltaserve: build FAILED (build.log)"; return 1; }
  say "deltaserve: built in $(( SECONDS - t0 )) s"
}

llama_src() {
  [[ -f "${lc}/src/CMakeLists.txt" ]] && return 0
  if [[ ! -f "${tarball}" ]]; then
    say "llama.cpp: no source: ${tarball} is missing (bench/anchors/prepare_llamacpp.sh here; carry .cache/anchors)"
    return 1
  fi
  x rm -rf "${lc}/src.tmp" && x mkdir -p "${lc}/src.tmp" && x tar xJf "${tarball}" -C "${lc}/src.tmp" &&
    x mv "${lc}/src.tmp" "${lc}/src"
}

build_llama() {
  if [[ -x "${llama_server}" && -x "${llama_bench}" ]]; then say "llama.cpp: built (${llama_server})"; return 0; fi
  llama_src || return 1
  local t0=${SECONDS}
  say "llama.cpp: building llama-server and llama-bench (CUDA sm_90) into ${lc}/b (log: build.log)"
  if [[ ! -f "${lc}/b/build.ninja" ]]; then
    x cmake -S "${lc}/src" -B "${lc}/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >> "${out}/build.log" 2>&1 ||
      { tail -30 "${out}/build.log"; say "llama.cpp: configure FAILED"; return 1; }
  fi
  x ninja -C "${lc}/b" -j "${jobs}" llama-server llama-bench >> "${out}/build.log" 2>&1 ||
    { grep -E "error" "${out}/build.log" | head -20; say "llama.cpp: build FAILED"; return 1; }
  say "llama.cpp: built in $(( SECONDS - t0 )) s"
}

# Checkpoint (tools/make_random_qwen35.py via bench/anchors/make_random_ckpt.py, the real Qwen3 tokenizer)
# and its GGUF (llama.cpp's converter), each written under a temporary name and renamed when whole.
ckpt_dir() { echo "${build}/ckpt-$1"; }
gguf_path() { echo "${build}/gguf-$1-bf16.gguf"; }
prep() {
  local p="$1" ck gg t0
  ck="$(ckpt_dir "${p}")" gg="$(gguf_path "${p}")"
  if [[ ! -f "${ck}/model.safetensors" ]]; then
    t0=${SECONDS}
    x rm -rf "${ck}.tmp"
    # Weights drawn on the GPU (seconds for the 9B; the CPU takes minutes), on the CPU if that fails.
    x "${py}" "${anchors}/make_random_ckpt.py" "${p}" "${ck}.tmp" --dtype bfloat16 --tokenizer "${tokenizer}" \
      --device "${device}" ||
      { [[ "${device}" != cpu ]] && say "prep ${p}: on ${device} FAILED; again on the CPU" && x rm -rf "${ck}.tmp" &&
        x "${py}" "${anchors}/make_random_ckpt.py" "${p}" "${ck}.tmp" --dtype bfloat16 --tokenizer "${tokenizer}"; } ||
      { say "prep ${p}: checkpoint FAILED"; return 1; }
    x mv "${ck}.tmp" "${ck}"
    say "prep ${p}: checkpoint in $(( SECONDS - t0 )) s"
  fi
  # The GGUF only where llama.cpp will serve it (BENCH_SERVERS=deltaserve skips the 9B's 18 GB conversion).
  if [[ ! -f "${gg}" && " ${servers} " == *" llama.cpp "* ]]; then
    llama_src || return 1
    t0=${SECONDS}
    x env PYTHONPATH="${lc}/src/gguf-py" "${py}" "${anchors}/convert_gguf.py" "${lc}/src" --pre qwen35 -- \
      "${ck}" --no-mtp --outtype bf16 --outfile "${gg}.tmp" || { say "prep ${p}: GGUF FAILED"; return 1; }
    x mv "${gg}.tmp" "${gg}"
    say "prep ${p}: GGUF in $(( SECONDS - t0 )) s"
  fi
}

num_prompts() { local n=$(( per_conc * $1 )); (( n < min_prompts )) && n=${min_prompts}; (( n > max_prompts )) && n=${max_prompts}; echo "${n}"; }

stop_server() {
  local name="$1" log="$2"
  [[ -z "${server_pid}" ]] && return 0
  kill -TERM "${server_pid}" 2>/dev/null
  for _ in $(seq 1 40); do kill -0 "${server_pid}" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "${server_pid}" 2>/dev/null
  wait "${server_pid}" 2>/dev/null
  server_pid=""
  { echo "===== ${name} (${today}) ====="; tail -c 4000000 "${log}"; } >> "${out}/servers.log"
}

# Waits for the server in server_pid to answer $@ (a readiness probe); 0 when ready.
wait_ready() {
  local name="$1" log="$2" deadline=$(( SECONDS + start_timeout )) t0=${SECONDS}
  shift 2
  [[ "${dry}" == 1 ]] && return 0
  while (( SECONDS < deadline )); do
    "$@" >/dev/null 2>&1 && { say "${name}: ready in $(( SECONDS - t0 )) s"; return 0; }
    kill -0 "${server_pid}" 2>/dev/null || { say "${name}: exited while starting; its log ends:"; tail -40 "${log}"; return 1; }
    sleep 1
  done
  say "${name}: not ready after ${start_timeout} s; its log ends:"; tail -40 "${log}"
  return 1
}

lc_health() { "${py}" -c 'import sys,urllib.request as u; sys.exit(0 if u.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' \
  "http://127.0.0.1:$1/health"; }

skipped=()
# One server, one preset, every concurrency. $1 = deltaserve | llama.cpp.
bench_server() {
  local server="$1" p="$2" port log flags c n t res rc t0
  port="$(free_port)" log="${work}/${server}-${p}.log"
  if (( $(left) < min_run + 30 )); then
    for c in ${concurrencies}; do skipped+=("${server} ${p} c=${c} (budget)"); done; return 0
  fi
  : > "${log}"
  if [[ "${server}" == deltaserve ]]; then
    [[ "${dry}" == 1 ]] || { [[ -x "${ds_server}" && -x "${ds_cli}" ]] || { say "deltaserve: not built (stage build)"; return 1; }; ds_env || return 1; }
    flags="--device ${device} --dtype ${dtype} --max-num-seqs ${max_seqs} --max-model-len ${ctx_per_slot}${ds_batched:+ --max-batched-tokens ${ds_batched}} --max-queue 1024 --metrics-port 0 ${ds_extra}"
    # shellcheck disable=SC2086
    start_server "${log}" env LD_LIBRARY_PATH="${ds_ld}" "${ds_server}" --model "$(ckpt_dir "${p}")" --model-name "${p}" \
      --host 127.0.0.1 --port "${port}" --shutdown-grace 5 ${flags}
    wait_ready "deltaserve ${p}" "${log}" env LD_LIBRARY_PATH="${ds_ld}" "${ds_cli}" --server "127.0.0.1:${port}" health ||
      { stop_server "deltaserve ${p}" "${log}"; return 1; }
  else
    [[ "${dry}" == 1 || -x "${llama_server}" ]] || { say "llama.cpp: not built (stage llama)"; return 1; }
    flags="-ngl 99 -np ${max_seqs} -c $(( max_seqs * ctx_per_slot )) ${lc_extra}"
    # shellcheck disable=SC2086
    start_server "${log}" "${llama_server}" -m "$(gguf_path "${p}")" --host 127.0.0.1 --port "${port}" ${flags}
    wait_ready "llama-server ${p}" "${log}" lc_health "${port}" || { stop_server "llama.cpp ${p}" "${log}"; return 1; }
  fi
  client() {  # $1 = concurrency, $2 = prompts, $3 = output tokens, $4 = result JSON; under timeout ${t}
    if [[ "${server}" == deltaserve ]]; then
      x timeout -k 5 "${t}" env LD_LIBRARY_PATH="${ds_ld}" "${ds_cli}" --server "127.0.0.1:${port}" bench \
        --num-requests "$2" --concurrency "$1" --input-len "${input_len}" --output-len "$3" --range-ratio 0 \
        --seed 1 --temperature 0 --result-json "$4" > /dev/null
    else
      x timeout -k 5 "${t}" "${py}" "${anchors}/lc_loadgen.py" "${port}" "$2" "$1" "${input_len}" "$3" 1 \
        --result-json "$4" > /dev/null
    fi
  }
  local cmax=0
  for c in ${concurrencies}; do (( c > cmax )) && cmax=${c}; done
  if [[ "${warmup}" == 1 ]] && (( $(left) > 2 * min_run )); then
    t=$(( $(left) < 120 ? $(left) : 120 )) t0=${SECONDS}
    client "${cmax}" "${cmax}" 8 "${work}/warmup.json" 2>/dev/null
    say "${server} ${p}: warm-up burst (${cmax} x ${input_len} -> 8) in $(( SECONDS - t0 )) s"
  fi
  for c in ${concurrencies}; do
    n="$(num_prompts "${c}")"
    t=$(( $(left) < run_timeout ? $(left) : run_timeout ))
    if (( t < min_run )); then skipped+=("${server} ${p} c=${c} (budget)"); continue; fi
    res="${work}/result.json"; rm -f "${res}"; t0=${SECONDS}
    client "${c}" "${n}" "${output_len}" "${res}" 2> "${work}/client.err"
    rc=$?
    [[ "${dry}" == 1 ]] && "${py}" "${anchors}/serving_rows.py" fake "${server}" "${c}" "${n}" "${res}"
    if [[ ! -s "${res}" ]]; then
      if (( rc == 124 || rc == 137 )); then say "${server} ${p} c=${c}: TIMED OUT after ${t} s"
      else say "${server} ${p} c=${c}: FAILED (rc ${rc})"; fi
      tail -5 "${work}/client.err"
      skipped+=("${server} ${p} c=${c} (rc ${rc})"); continue
    fi
    (( rc != 0 )) && { say "${server} ${p} c=${c}: some requests failed:"; tail -3 "${work}/client.err"; }
    printf '[%4d s] ' "${SECONDS}"
    "${py}" "${anchors}/serving_rows.py" add "${rows}" "${res}" server="${server}" preset="${p}" concurrency="${c}" \
      num_prompts="${n}" input_len="${input_len}" output_len="${output_len}" dtype="${dtype}" device="${device}" \
      gpu="${gpu}" date="${today}" commit="${commit}" server_flags="${flags% }" \
      run_wall_s="$(( SECONDS - t0 ))"
  done
  stop_server "${server} ${p}" "${log}"
}

run_llama_bench() {
  local p="$1" gg t0
  gg="$(gguf_path "${p}")"
  [[ "${dry}" == 1 || -x "${llama_bench}" ]] || { say "llama-bench: not built (stage llama)"; return 1; }
  (( $(left) > 90 )) || { skipped+=("llama-bench ${p} (budget)"); return 0; }
  t0=${SECONDS}
  x timeout -k 5 120 "${llama_bench}" -m "${gg}" -ngl 99 -p "${input_len}" -n "${output_len}" -r 3 -o jsonl -oe md \
    > "${work}/llama_bench_${p}.jsonl" 2> "${work}/llama_bench_${p}.err" || { say "llama-bench ${p}: FAILED"; tail -20 "${work}/llama_bench_${p}.err"; return 1; }
  grep '^|' "${work}/llama_bench_${p}.err"
  [[ "${dry}" == 1 ]] || "${py}" "${anchors}/serving_rows.py" lcbench "${lcrows}" "${work}/llama_bench_${p}.jsonl" preset="${p}" gpu="${gpu}" date="${today}"
  say "llama-bench ${p}: $(( SECONDS - t0 )) s"
}

finish() {
  [[ -f "${rows}" ]] && cp "${rows}" "${out}/bench_serving_h200.jsonl"
  [[ -f "${lcrows}" ]] && cp "${lcrows}" "${out}/llama_bench.jsonl"
  "${py}" "${anchors}/serving_rows.py" table "${rows}" "${lcrows}"
  if (( ${#skipped[@]} )); then
    echo; echo "Not measured in this call (run the stage again, e.g. with BENCH_SERVERS / BENCH_CONCURRENCIES):"
    printf '  %s\n' "${skipped[@]}"
  fi
  say "stage ${stage} done (commit ${commit}, ${gpu})"
}

say "stage ${stage}: budget ${budget} s, ${gpu}, commit ${commit}$([[ "${dry}" == 1 ]] && echo ', DRY RUN')"
case "${stage}" in
  build)
    build_deltaserve ;;
  llama)
    llama_src || exit 1
    # The checkpoints (weights drawn on the GPU) and GGUFs (one core, mostly disk) are made beside the
    # build, under timeout in their own process group, so that what the budget cuts off is killed whole
    # (a preset stage redoes only what is missing: each file is renamed into place when complete).
    prep_pid=""
    if [[ -n "${prep_presets}" ]]; then
      say "prep ${prep_presets}: in the background (log: prep.log)"
      # shellcheck disable=SC2086
      GPU_BENCH_CHILD=1 timeout -k 10 "$(left)" bash "${root}/scripts/gpu_serving_bench.sh" prep ${prep_presets} \
        > "${out}/prep.log" 2>&1 &
      prep_pid=$!
    fi
    build_llama; rc=$?
    if [[ -n "${prep_pid}" ]]; then
      wait "${prep_pid}"; prc=$?
      (( prc == 124 )) && say "prep: cut off by the budget; the preset stages finish it"
      grep -E '^\[|FAILED|Error|error' "${out}/prep.log" | tail -20
    fi
    exit "${rc}" ;;
  prep)
    (( $# )) || { echo "usage: $0 prep PRESET..." >&2; exit 2; }
    rc=0
    for p in "$@"; do prep "${p}" || rc=1; done
    exit "${rc}" ;;
  table)
    finish ;;
  *)
    p="${stage}"
    prep "${p}" 2>&1 | tee -a "${out}/prep.log"
    have_gguf=0; [[ "${dry}" == 1 || -f "$(gguf_path "${p}")" ]] && have_gguf=1
    have_ckpt=0; [[ "${dry}" == 1 || -f "$(ckpt_dir "${p}")/model.safetensors" ]] && have_ckpt=1
    (( have_gguf )) && run_llama_bench "${p}"
    for s in ${servers}; do
      case "${s}" in
        deltaserve|llama.cpp)
          if [[ "${s}" == deltaserve ]] && (( ! have_ckpt )) || [[ "${s}" == llama.cpp ]] && (( ! have_gguf )); then
            say "${s} ${p}: no model file (prep failed above)"; skipped+=("${s} ${p} (no model)"); continue
          fi
          bench_server "${s}" "${p}" || { say "${s} ${p}: skipped (see above)"; skipped+=("${s} ${p} (failed)"); } ;;
        *) say "unknown server ${s} (deltaserve, llama.cpp)" ;;
      esac
    done
    finish ;;
esac
