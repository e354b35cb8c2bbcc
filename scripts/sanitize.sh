#!/usr/bin/env bash
# Builds the LibTorch-linked code (kernels' CPU paths, models, runner, engine, gRPC services) with
# AddressSanitizer and UBSan (-DDELTASERVE_SANITIZE=ON: the project's compiler, CUDA off, no benchmarks;
# LibTorch itself is not instrumented) and runs their tests there, leaks included. Any sanitizer report
# fails the test that caused it. The torch-free parsers have their own sanitized build (scripts/fuzz.sh).
#   scripts/sanitize.sh [CTEST_ARGS...]     (default: the suites listed below)
# Environment: SANITIZE_BUILD_DIR (default build-sanitize), SANITIZE_JOBS (default nproc).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
build="${SANITIZE_BUILD_DIR:-${root}/build-sanitize}"
jobs="${SANITIZE_JOBS:-$(nproc)}"
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
mkdir -p "${build}"
# The "sanitize" preset of CMakePresets.json (-O1 -g1: half the compile time of -O2 -g, and line tables
# are all a sanitizer report needs).
(cd "${root}" && cmake --preset sanitize -B "${build}" -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}") \
  > "${build}/configure.log" 2>&1 || { cat "${build}/configure.log" >&2; exit 2; }
# The test binaries of the suites below (and what they link); not the whole tree.
targets=(kernels_test fused_ops_test linear_test paged_attention_test qwen35_model_test runner_test
  sampler_test batch_sampler_test engine_unit_test engine_test server_test parsed_request_test call_gate_test
  vision_server_test openai_translate_test fuzz_generate_request)
start=$(date +%s)
cmake --build "${build}" -j "${jobs}" --target "${targets[@]}"
echo "sanitize.sh: build took $(( $(date +%s) - start )) s"
# LibTorch's and the Python fixtures' own allocations at exit are theirs, not ours: suppressed by module.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_odr_violation=0${ASAN_OPTIONS:+:${ASAN_OPTIONS}}"
export LSAN_OPTIONS="suppressions=${root}/scripts/sanitize.supp:print_suppressions=0${LSAN_OPTIONS:+:${LSAN_OPTIONS}}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:${UBSAN_OPTIONS}}"
cd "${build}"
if [[ $# -eq 0 ]]; then
  # Everything those binaries hold but the CUDA tests (no GPU in this build) and two tests that take minutes
  # under ASan while their code runs in shorter tests of the same suites: the 4,096-step drift test (the other
  # RecurrentDecode tests) and the inverse's error table over every method, regime and chunk size (the
  # other TriInverse tests run each product path: per-matrix, tile-scaled, refined, guarded).
  set -- -R '^(api\.|engine\.|runner\.|fuzz\.generate_request_replay|Qwen35|ChunkGatedDeltaRule|PrefillInPool|TriInverse|RecurrentDecode|RecurrentMultiStep|CausalConv1d|FusedOps|Linear|RmsNormLinear|PagedAttention|KernelArgs|PadreMixer)' \
    -E '(Cuda|QuantizedStateDriftOver4096Steps|TriInverse.EveryMethodAgainstFp64InEveryRegime)'
fi
ctest --output-on-failure -j "${jobs}" "$@"
