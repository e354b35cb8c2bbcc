#!/usr/bin/env bash
# The README's "run it" command: sets up and builds what is missing (reusing what is there), starts
# deltaserve on the shipped models (models/qwen35-small for text, models/padre-detector for vision),
# streams a chat answer with deltaserve-cli, detects objects in a sample image and draws the boxes,
# prints a few /metrics lines (per-layer latency included), and shuts the server down cleanly.
#   scripts/demo.sh                 (DELTASERVE_SKIP_SETUP=1 skips the package/venv check)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
out="${build}/demo"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ "${DELTASERVE_SKIP_SETUP:-0}" != 1 ]]; then
  step "setup (Debian packages, Python venv; only what is missing)"
  "${root}/scripts/setup.sh"
fi
step "build (deltaserve, deltaserve-cli; the first build takes several minutes on 2 cores)"
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
if [[ ! -f "${build}/build.ninja" ]]; then
  cmake -S "${root}" -B "${build}" -G Ninja -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}" \
    -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
fi
cmake --build "${build}" --target deltaserve deltaserve-cli
mkdir -p "${out}"

free_port() { "${DELTASERVE_PYTHON}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"; metrics="$(free_port)"
cli=("${build}/client/deltaserve-cli" --server "127.0.0.1:${port}")

step "start the server: text model + PADRe detector, gRPC on :${port}, /metrics on :${metrics}"
"${build}/server/deltaserve" --host 127.0.0.1 --port "${port}" --metrics-port "${metrics}" \
  --model "${root}/models/qwen35-small" --vision-model "${root}/models/padre-detector" \
  --threads 1 --layer-metrics all 2>"${out}/server.log" &
server=$!
trap 'kill -TERM ${server} 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  "${cli[@]}" health >/dev/null 2>&1 && break
  kill -0 "${server}" 2>/dev/null || { cat "${out}/server.log"; exit 1; }
  sleep 0.5
done
"${cli[@]}" health
"${cli[@]}" models

step "chat: deltaserve-cli generate --chat (streams as tokens arrive)"
"${cli[@]}" generate --chat "How do I list the files in a directory?" --max-tokens 64 --temperature 0.7 --seed 1

step "detect: deltaserve-cli detect ${root#"${PWD}/"}/models/padre-detector/sample.png --draw"
"${cli[@]}" detect "${root}/models/padre-detector/sample.png" --draw "${out}/detections.png"

step "metrics: a few lines of /metrics"
curl -s "http://127.0.0.1:${metrics}/metrics" -o "${out}/metrics.txt" 2>/dev/null ||
  "${DELTASERVE_PYTHON}" -c "import urllib.request,sys; open(sys.argv[2],'wb').write(urllib.request.urlopen(sys.argv[1]).read())" \
    "http://127.0.0.1:${metrics}/metrics" "${out}/metrics.txt"
grep -E '^deltaserve_layer_duration_seconds_(sum|count)\{kind="(linear_attention|padre)",layer="0"' "${out}/metrics.txt" || true
grep -E '^deltaserve_(time_to_first_token_seconds_count|generation_tokens_total|vision_images_total|build_info)' \
  "${out}/metrics.txt" || true

step "shut down (SIGTERM: drain, exit 0)"
trap - EXIT
kill -TERM "${server}"
wait "${server}" && echo "server exited 0"
echo "drawn boxes: ${out}/detections.png; server log: ${out}/server.log"
