#!/usr/bin/env bash
# Builds and checks deltaserve on a CUDA machine that has python3 with torch but none of Debian's RPC
# libraries: unpacks the carried .deb files (scripts/fetch_debs.sh) into a private root, builds with
# CUDA, runs every test (the CUDA ones included) and the kernel benchmark on the GPU.
#   scripts/gpu_check.sh [DEB_DIR] [OUT_DIR]      (defaults: .debs and ./gpu-out; GPU_CHECK_BENCH=0 skips
#                                                 the benchmark)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
debs="${1:-${root}/.debs}"
out="${2:-${OUT:-${root}/gpu-out}}"
mkdir -p "${out}"
sysroot="$(mktemp -d /tmp/deltaserve-debroot.XXXX)"
for f in "${debs}"/*.deb; do dpkg -x "$f" "${sysroot}"; done
lib="${sysroot}/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="${lib}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PATH="${sysroot}/usr/bin:${PATH}"
export PKG_CONFIG_PATH="${lib}/pkgconfig" PKG_CONFIG_SYSROOT_DIR="${sysroot}"
build="${root}/build-gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "${out}/gpu.txt"

configure() {
  cmake -S "${root}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_CUDA=ON \
    -DDELTASERVE_PYTHON="$(command -v python3)" -DCMAKE_PREFIX_PATH="${lib}/cmake;${sysroot}/usr" \
    -DProtobuf_INCLUDE_DIR="${sysroot}/usr/include" -DProtobuf_LIBRARY="${lib}/libprotobuf.so" \
    -DProtobuf_PROTOC_EXECUTABLE="${sysroot}/usr/bin/protoc" "$@"
}
if ! configure -DDELTASERVE_WITH_RPC=ON > "${out}/configure.log" 2>&1; then
  echo "gpu_check: RPC stack did not configure here (see configure.log); building kernels only"
  rm -rf "${build}"
  configure -DDELTASERVE_WITH_RPC=OFF >> "${out}/configure.log" 2>&1 || { tail -30 "${out}/configure.log"; exit 1; }
fi
grep -E "LibTorch|CUDA sources" "${out}/configure.log"
start=$(date +%s)
cmake --build "${build}" -j "$(nproc)" > "${out}/build.log" 2>&1 || { grep -E "error|FAILED" "${out}/build.log" | head -30; exit 1; }
echo "gpu_check: build took $(( $(date +%s) - start )) s"
rc=0
(cd "${build}" && ctest --output-on-failure -j 4 > "${out}/ctest.log" 2>&1) || rc=1
grep -E "tests passed|tests failed|Failed|\*\*\*" "${out}/ctest.log" | head -20
"${build}/tests/kernels_test" --gtest_filter='CudaKernels.*:CausalConv1dTest.RunsOnCuda*' > "${out}/cuda_tests.log" 2>&1 || rc=1
grep -E "Cuda|CUDA" "${out}/ctest.log" | grep -E "Passed|Failed|Skipped" | head -20
grep -E "^\[  (PASSED|FAILED|SKIPPED)" "${out}/cuda_tests.log"
if [[ "${GPU_CHECK_BENCH:-1}" == 1 ]]; then
  "${build}/bench/bench_kernels" --device cuda --reps 20 > "${out}/bench_cuda.txt" 2>&1 || rc=1
  grep -v '^{' "${out}/bench_cuda.txt"
fi
exit ${rc}
