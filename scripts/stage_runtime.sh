#!/usr/bin/env bash
# Makes a self-contained runtime tree of a build: `cmake --install` (binaries stripped, the shipped models
# under share/deltaserve/models) into PREFIX, then a copy of every shared library the binaries load into
# PREFIX/lib, LibTorch's and gRPC's included, except the C/C++ runtime that every Linux base image has.
# The container images' runtime stage is this tree on a slim Debian; the deploy tests serve from it.
#   scripts/stage_runtime.sh BUILD_DIR PREFIX
# Run the binaries with PREFIX/lib on the loader path (the images add it to /etc/ld.so.conf.d; elsewhere
# LD_LIBRARY_PATH=PREFIX/lib): the binaries find it through their RPATH, but the libraries' own
# dependencies (gRPC's on Abseil, say) are looked up by the loader's path only.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BUILD_DIR PREFIX" >&2; exit 2; }
build="$(realpath "$1")"
prefix="$(realpath -m "$2")"
[[ -f "${build}/CMakeCache.txt" ]] || { echo "stage_runtime: ${build} is not a configured build folder" >&2; exit 1; }
for b in server/deltaserve client/deltaserve-cli server/generate/deltaserve-generate; do
  [[ -x "${build}/${b}" ]] || { echo "stage_runtime: ${build}/${b} is not built" >&2; exit 1; }
done
rm -rf "${prefix}"
cmake --install "${build}" --prefix "${prefix}" --strip > /dev/null
mkdir -p "${prefix}/lib"
# The base image's own: the loader, glibc, libstdc++ and libgcc. Copying them would fight the base's.
base_libs='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libstdc\+\+|libgcc_s)\.so'
missing=0
while read -r name path; do
  [[ "${name}" =~ ${base_libs} ]] && continue
  if [[ "${path}" == "not" || -z "${path}" ]]; then
    echo "stage_runtime: ${name} not found by ldd" >&2; missing=1; continue
  fi
  [[ -e "${prefix}/lib/${name}" ]] || cp -L "${path}" "${prefix}/lib/${name}"
done < <(for exe in "${prefix}"/bin/*; do ldd "${exe}"; done | awk '/=>/ {print $1, $3}' | sort -u)
[[ ${missing} -eq 0 ]] || exit 1
# Strip symbols the loader does not need (LibTorch ships them: hundreds of MB), keep what is dynamic.
find "${prefix}/lib" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2> /dev/null || true
git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --short HEAD > "${prefix}/share/deltaserve/COMMIT" 2> /dev/null || true
du -sh "${prefix}" | awk '{print "stage_runtime: " $2 " holds " $1}'
