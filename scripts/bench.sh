#!/usr/bin/env bash
# The main job until the server lands: sets up (idempotent), builds the kernel benchmark and runs it.
# Arguments go to bench_kernels (--help lists them; --quick is a one-minute run, --device cuda on a GPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
[[ "${DELTASERVE_SKIP_SETUP:-0}" == 1 ]] || "${root}/scripts/setup.sh"
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
cmake -S "${root}" -B "${build}" -G Ninja -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}" \
  -DDELTASERVE_CUDA="${DELTASERVE_CUDA:-AUTO}" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
cmake --build "${build}" -j "$(nproc)" --target bench_kernels
exec "${build}/bench/bench_kernels" "$@"
