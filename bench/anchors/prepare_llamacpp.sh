#!/usr/bin/env bash
# On a CPU machine with PyPI access: packs the llama.cpp source vendored in the llama-cpp-python sdist
# (PyPI) into a trimmed tarball (about 8 MB) that the GPU serving benchmark (scripts/gpu_serving_bench.sh
# llama) builds on the H200, which has no internet. Default output: .cache/anchors/llamacpp.tar.xz
# (ignored by git; name .cache/anchors in the device call's carry).
#   bench/anchors/prepare_llamacpp.sh [OUT_TARBALL] [LLAMA_CPP_PYTHON_VERSION]
# 0.3.36 vendors llama.cpp 0c1e57098 (2026-10-01), which knows Qwen3.5 as the `qwen35` architecture.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$(realpath -m "${1:-${root}/.cache/anchors/llamacpp.tar.xz}")"
ver="${2:-0.3.36}"
mkdir -p "$(dirname "${out}")"
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==${ver}" -d "${tmp}" >/dev/null
tar xzf "${tmp}/llama_cpp_python-${ver}.tar.gz" -C "${tmp}"
src="${tmp}/llama_cpp_python-${ver}/vendor/llama.cpp"
[[ -f "${src}/CMakeLists.txt" ]] || { echo "prepare_llamacpp: no vendor/llama.cpp in the sdist" >&2; exit 1; }
# What the sdist vendors, for the record (the sdist carries no .git; the version names the commit above).
echo "llama-cpp-python ${ver}: llama.cpp $(git -C "${src}" log -1 --format='%H (%cd)' 2>/dev/null || echo 'as vendored')"
# Models, docs, media, tests and benches are not needed to build llama-server and llama-bench or to
# run convert_hf_to_gguf.py (conversion/ and gguf-py/ stay).
tar -C "${src}" --exclude=./models --exclude=./docs --exclude=./media --exclude=./.git --exclude=./tests \
  --exclude=./benches -cJf "${out}.tmp" .
mv "${out}.tmp" "${out}"
echo "llama-cpp-python ${ver}" > "$(dirname "${out}")/llamacpp.version"
ls -la "${out}"
