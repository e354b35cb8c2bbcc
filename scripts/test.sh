#!/usr/bin/env bash
# Builds deltaserve and runs every test: setup (skip with DELTASERVE_SKIP_SETUP=1 once done),
# configure with Ninja + ccache, build, ctest. Extra arguments go to ctest (e.g. -R tri_inverse).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
if [[ "${DELTASERVE_SKIP_SETUP:-0}" != 1 ]]; then
  "${root}/scripts/setup.sh"
fi
build="${DELTASERVE_BUILD_DIR:-${root}/build}"
# ccache must see PCH-using compiles as cacheable.
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
cmake -S "${root}" -B "${build}" -G Ninja \
  -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}" \
  -DDELTASERVE_CUDA="${DELTASERVE_CUDA:-AUTO}" \
  -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}"
start=$(date +%s)
cmake --build "${build}" -j "$(nproc)"
echo "test.sh: build took $(( $(date +%s) - start )) s"
cd "${build}"
ctest --output-on-failure -j "$(nproc)" "$@"
