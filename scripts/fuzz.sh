#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang, AddressSanitizer and UBSan (a configuration of
# its own: -DDELTASERVE_FUZZ=ON, no LibTorch; it also builds the parsers' unit tests sanitized, which
# `ctest --test-dir BUILD` runs) and runs each harness for SECONDS on a scratch copy of its seed
# corpus, tests/fuzz/corpus/<name>/ (so runs never write into the repository). Prints per harness the
# executions, the corpus before and after, and findings: a crash, leak, timeout, out-of-memory or
# sanitizer report is saved as <out>/<harness>-crash-* (etc.) and makes the script exit 1.
#   scripts/fuzz.sh [SECONDS] [HARNESS...]      (default 60 s each, every harness)
# Environment: FUZZ_BUILD_DIR (default build-fuzz), FUZZ_OUT (findings and logs; default a temporary
# folder, kept when something is found), FUZZ_JOBS (harnesses run at once; default 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# DELTASERVE_PYTHON: the venv's, for the sanitized unit tests' fixtures (tokenizers, transformers).
source "${root}/scripts/env.sh"
seconds="${1:-60}"
shift || true
build="${FUZZ_BUILD_DIR:-${root}/build-fuzz}"
out="${FUZZ_OUT:-$(mktemp -d -t deltaserve-fuzz-XXXXXX)}"
jobs="${FUZZ_JOBS:-2}"
mkdir -p "${out}"
# 77: what CTest counts as skipped (fuzz.short), so a machine without clang says so instead of failing.
command -v clang++ > /dev/null || { echo "fuzz.sh: skipped: clang++ is not installed (Debian: clang, libclang-rt-dev)" >&2; exit 77; }
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
# The "fuzz" preset of CMakePresets.json (clang, -DDELTASERVE_FUZZ=ON).
(cd "${root}" && cmake --preset fuzz -B "${build}" -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}" "${launcher[@]}") \
  > "${out}/configure.log" 2>&1 ||
  { cat "${out}/configure.log" >&2; exit 2; }
cmake --build "${build}" -j "${jobs}" > "${out}/build.log" 2>&1 || { tail -40 "${out}/build.log" >&2; exit 2; }
harnesses=("$@")
if [[ ${#harnesses[@]} -eq 0 ]]; then
  # Every corpus whose harness this build has (fuzz_generate_request needs LibTorch: the regular and
  # sanitized builds run it through its replay driver instead).
  for d in "${root}"/tests/fuzz/corpus/*/; do
    [[ -x "${build}/tests/fuzz/fuzz_$(basename "${d}")" ]] && harnesses+=("fuzz_$(basename "${d}")")
  done
fi

run_one() {
  local h="$1" name="${1#fuzz_}"
  local work="${out}/corpus-${name}"
  mkdir -p "${work}"
  # Leaks are findings too; a slow input (over 10 s) or 2 GB of memory is one as well.
  "${build}/tests/fuzz/${h}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="${out}/${h}-" "${work}" "${root}/tests/fuzz/corpus/${name}" > "${out}/${h}.log" 2>&1
}
# Harnesses that read files write one per input: a memory file system keeps that from dominating.
[[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]] && export TMPDIR=/dev/shm
export -f run_one
export build out seconds root
rc=0
printf '%s\n' "${harnesses[@]}" | xargs -P "${jobs}" -I{} bash -c 'run_one {}' || rc=1

printf '\n%-24s %12s %8s %8s  %s\n' harness executions seeds corpus findings
for h in "${harnesses[@]}"; do
  name="${h#fuzz_}"
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "${out}/${h}.log" | grep -o '[0-9]*$' || echo '?')"
  seeds="$(find "${root}/tests/fuzz/corpus/${name}" -type f | wc -l)"
  grown="$(find "${out}/corpus-${name}" -type f | wc -l)"
  found="$(find "${out}" -maxdepth 1 -name "${h}-*" -type f | wc -l)"
  printf '%-24s %12s %8s %8s  %s\n' "${h}" "${execs}" "${seeds}" "$((seeds + grown))" "${found}"
  if [[ "${found}" != 0 ]]; then
    rc=1
    grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' "${out}/${h}.log" | sed 's/^/    /' || true
  fi
done
if [[ ${rc} -ne 0 ]]; then
  echo "fuzz.sh: findings or failed runs; logs and inputs in ${out}" >&2
  exit 1
fi
[[ -n "${FUZZ_OUT:-}" ]] || rm -rf "${out}"
echo "fuzz.sh: no findings (${seconds} s per harness)"
