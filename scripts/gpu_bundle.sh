#!/usr/bin/env bash
# Packs what the lent GPU machine needs to run the CUDA tests and the serving benchmark without building
# there (a build on it costs minutes of scarce device time): the CUDA binaries of a build made here, debug
# info stripped, and the runtime Debian libraries they load (from .debs/, scripts/fetch_debs.sh), into one
# ignored tarball to name in the device call's carry. The GPU machine supplies LibTorch (its python3's
# torch, the same version as the venv's). Build with -DDELTASERVE_NATIVE=OFF: the GPU host is another CPU.
#   scripts/gpu_bundle.sh [BUILD_DIR] [OUT_TARBALL]     (defaults: build, .cache/gpu-bundle.tar.xz)
# On the GPU machine: mkdir -p build-gpu && tar xJf .cache/gpu-bundle.tar.xz -C build-gpu; then
# scripts/gpu_env.sh (sourced by gpu_check.sh and gpu_serving_bench.sh) sees build-gpu/lib and uses it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(realpath "${1:-${root}/build}")"
out="$(realpath -m "${2:-${root}/.cache/gpu-bundle.tar.xz}")"
grep -q 'DELTASERVE_NATIVE:BOOL=OFF' "${build}/CMakeCache.txt" ||
  { echo "gpu_bundle: ${build} was built with -march=native; reconfigure with -DDELTASERVE_NATIVE=OFF" >&2; exit 1; }
[[ -d "${build}/kernels/CMakeFiles/deltaserve_kernels.dir/cuda" ]] ||
  { echo "gpu_bundle: ${build} has no CUDA sources" >&2; exit 1; }
binaries=(tests/kernels_test tests/fused_ops_test tests/linear_test tests/paged_attention_test tests/runner/runner_test
  tests/runner/batch_sampler_test tests/runner/sampler_test tests/model/qwen35_model_test tests/model/padre_model_test
  tests/engine/engine_test server/deltaserve-detect-eval
  bench/bench_model bench/bench_kernels bench/bench_linear bench/bench_vision server/deltaserve client/deltaserve-cli)
stage="$(mktemp -d)"
trap 'rm -rf "${stage}"' EXIT
for b in "${binaries[@]}"; do
  [[ -x "${build}/${b}" ]] || { echo "gpu_bundle: ${build}/${b} is not built" >&2; exit 1; }
  mkdir -p "${stage}/$(dirname "${b}")"
  strip --strip-debug -o "${stage}/${b}" "${build}/${b}"
done
# Runtime libraries only: the -dev packages, compilers and headers are for building.
mkdir -p "${stage}/root"
for f in "${root}"/.debs/*.deb; do
  case "$(basename "${f}")" in *-dev_*|protobuf-compiler*|civetweb_*|nlohmann*) continue ;; esac
  dpkg -x "${f}" "${stage}/root"
done
mkdir -p "${stage}/lib"
cp -a "${stage}/root/usr/lib/x86_64-linux-gnu/"*.so.* "${stage}/lib/"
rm -rf "${stage}/root"
git -C "${root}" rev-parse --short HEAD > "${stage}/lib/.bundle"
mkdir -p "$(dirname "${out}")"
tar -C "${stage}" -cf - . | xz -T2 -6 > "${out}.tmp"
mv "${out}.tmp" "${out}"
ls -la "${out}"
