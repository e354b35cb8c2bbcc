#!/usr/bin/env bash
# Builds and checks deltaserve on a CUDA machine that has python3 with torch but none of Debian's RPC
# libraries: unpacks the carried .deb files (scripts/fetch_debs.sh) into a private root, builds with
# CUDA, runs the CUDA tests of every test binary (and, unless told not to, all of CTest) and the kernel
# benchmark on the GPU. Prints one line per CUDA test: PASSED, FAILED or SKIPPED.
#   scripts/gpu_check.sh [DEB_DIR] [OUT_DIR]      (defaults: .debs and $OUT or ./gpu-out)
# Environment:
#   GPU_CHECK_TARGETS  Ninja targets to build (default: all)
#   A build-gpu/ holding an unpacked scripts/gpu_bundle.sh tarball is used as it is: no build, no CTest.
#   GPU_CHECK_CTEST=0  skip the whole CTest run (the CUDA tests still run, binary by binary)
#   GPU_CHECK_BENCH=0  skip the kernel benchmark
#   GPU_CHECK_SANITIZE=0  skip compute-sanitizer: memcheck over GPU_CHECK_MEMCHECK_FILTER (default: the
#                      fused prefill, tiled decode, conv and PADRe mixer tests) and racecheck over GPU_CHECK_RACECHECK_FILTER
#                      (a smaller set)
#   DELTASERVE_QWEN35_GOLDEN  golden checkpoints made elsewhere by tools/make_qwen35_golden.py (the GPU
#                      machine may lack transformers); without it the golden-model CUDA tests skip
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
debs="${1:-${root}/.debs}"
out="${2:-${OUT:-${root}/gpu-out}}"
mkdir -p "${out}"
# The unpacked .debs' root, the loader/PATH/pkg-config environment and gpu_configure (shared with
# scripts/gpu_serving_bench.sh).
# shellcheck source=gpu_env.sh
source "${root}/scripts/gpu_env.sh" "${debs}"
build="${GPU_BUILD}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "${out}/gpu.txt"

if [[ "${GPU_PREBUILT}" == 1 ]]; then
  echo "gpu_check: prebuilt binaries of commit $(cat "${build}/lib/.bundle") (scripts/gpu_bundle.sh); not building"
elif ! gpu_configure -DDELTASERVE_WITH_RPC=ON > "${out}/configure.log" 2>&1; then
  echo "gpu_check: RPC stack did not configure here (see configure.log); building kernels only"
  rm -rf "${build}"
  gpu_configure -DDELTASERVE_WITH_RPC=OFF >> "${out}/configure.log" 2>&1 || { tail -30 "${out}/configure.log"; exit 1; }
fi
if [[ "${GPU_PREBUILT}" != 1 ]]; then
  grep -E "LibTorch|CUDA sources" "${out}/configure.log"
  start=$(date +%s)
  # shellcheck disable=SC2086  # a list of targets
  cmake --build "${build}" -j "$(nproc)" ${GPU_CHECK_TARGETS:+--target ${GPU_CHECK_TARGETS}} > "${out}/build.log" 2>&1 ||
    { grep -E "error|FAILED" "${out}/build.log" | head -40; exit 1; }
  echo "gpu_check: build took $(( $(date +%s) - start )) s"
fi
rc=0
if [[ "${GPU_CHECK_CTEST:-1}" == 1 && "${GPU_PREBUILT}" != 1 ]]; then
  (cd "${build}" && ctest --output-on-failure -j 4 > "${out}/ctest.log" 2>&1) || rc=1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "${out}/ctest.log" | head -20
fi
# Every CUDA test, binary by binary, whatever CTest did: these are the ones CI cannot run.
export DELTASERVE_SAMPLER_FIXTURES="${DELTASERVE_SAMPLER_FIXTURES:-}"
: > "${out}/cuda_tests.log"
for bin in "${build}"/tests/*_test "${build}"/tests/*/*_test; do
  [[ -x "${bin}" ]] || continue
  "${bin}" --gtest_list_tests --gtest_filter='*Cuda*:*CUDA*' 2>/dev/null | grep -q '^  ' || continue
  echo "== $(basename "${bin}")" >> "${out}/cuda_tests.log"
  timeout 540 "${bin}" --gtest_filter='*Cuda*:*CUDA*' >> "${out}/cuda_tests.log" 2>&1 || rc=1
done
# The fused state-and-output prefill pass (off by default until measured) under the model: the golden
# Qwen3.5 CUDA tests against transformers with DELTASERVE_GDN_FUSED_OUTPUT=1 (kernels_test's
# CudaChunkPrefill.BFloat16FusedStateOutputPass* above compares it with the two passes directly).
for bin in "${build}"/tests/qwen35_model_test "${build}"/tests/*/qwen35_model_test; do
  [[ -x "${bin}" ]] || continue
  echo "== $(basename "${bin}") with DELTASERVE_GDN_FUSED_OUTPUT=1" >> "${out}/cuda_tests.log"
  DELTASERVE_GDN_FUSED_OUTPUT=1 timeout 300 "${bin}" --gtest_filter='Qwen35GoldenCuda*' >> "${out}/cuda_tests.log" 2>&1 ||
    rc=1
done
grep -E "^== |^\[  (PASSED|FAILED|SKIPPED) \]|^\[       OK \]|^\[  FAILED  \]|^\[  SKIPPED \]" "${out}/cuda_tests.log"
# compute-sanitizer over the fused kernels' tests: memcheck (out-of-bounds and misaligned accesses) and
# racecheck (shared-memory hazards). Only the summary lines are printed; the logs land in the output folder.
if [[ "${GPU_CHECK_SANITIZE:-1}" == 1 && -x "${build}/tests/kernels_test" ]]; then
  if command -v compute-sanitizer > /dev/null; then
    # racecheck instruments every shared-memory access: it gets the smaller shapes.
    declare -A filter=([memcheck]="${GPU_CHECK_MEMCHECK_FILTER:-CudaChunkPrefill.*:CudaTiledDecode.*:CausalConv1dTest.*:CudaPadreMixer.*:CudaKernels.FusedTriInverse*:CudaKernels.FusedInt8*:CudaKernels.MultiToken*:CudaPrefillInPool.*}"
      [racecheck]="${GPU_CHECK_RACECHECK_FILTER:-CudaChunkPrefill.ChunkSizes*:CudaChunkPrefill.ForcedGuard*:CudaChunkPrefill.BFloat16*:CudaTiledDecode.NeverSynchronises*}")
    for tool in memcheck racecheck; do
      timeout "${GPU_CHECK_SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool "${tool}" --error-exitcode 3 \
        "${build}/tests/kernels_test" --gtest_filter="${filter[${tool}]}" > "${out}/sanitize_${tool}.log" 2>&1 ||
        rc=1
      echo "sanitize ${tool}: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "${out}/sanitize_${tool}.log" | tail -1)" \
        "($(grep -cE '^\[       OK \]' "${out}/sanitize_${tool}.log") tests ran)"
    done
  else
    echo "sanitize: compute-sanitizer is not on PATH; not run"
  fi
fi
if [[ "${GPU_CHECK_BENCH:-1}" == 1 && -x "${build}/bench/bench_kernels" ]]; then
  "${build}/bench/bench_kernels" --device cuda --reps 20 > "${out}/bench_cuda.txt" 2>&1 || rc=1
  grep -v '^{' "${out}/bench_cuda.txt"
fi
exit ${rc}
