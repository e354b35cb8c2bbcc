# shellcheck shell=bash
# Sourced by scripts/gpu_check.sh and scripts/gpu_serving_bench.sh on the lent GPU machine (python3 with
# torch, no Debian RPC packages): unpacks the carried .deb files (scripts/fetch_debs.sh) into a private
# root once, and points the loader, PATH and pkg-config at it. gpu_configure [cmake args] configures
# the CUDA build in build-gpu/ against that root.
#   source scripts/gpu_env.sh [DEB_DIR]     (default .debs)
# Defines GPU_ROOT (the repo), GPU_BUILD (build-gpu, or $GPU_BUILD), GPU_SYSROOT, GPU_LIB, and GPU_PREBUILT=1
# when GPU_BUILD holds an unpacked scripts/gpu_bundle.sh tarball (then nothing is unpacked or built). The root is the
# ignored build-gpu-sysroot/, so it outlives one device call: a later call on the same warm machine needs
# no .debs carried. Returns non-zero (and says why) when there is neither .deb nor an unpacked root.
GPU_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU_BUILD="${GPU_BUILD:-${GPU_ROOT}/build-gpu}"
GPU_SYSROOT="${GPU_ROOT}/build-gpu-sysroot"
GPU_LIB="${GPU_SYSROOT}/usr/lib/x86_64-linux-gnu"

_gpu_unpack() {
  local debs="$1" stamp="${GPU_SYSROOT}/.debs-unpacked" want f
  # shellcheck disable=SC2012  # .deb names are plain
  want="$(cd "${debs}" 2>/dev/null && ls -l -- *.deb 2>/dev/null | awk '{print $5, $NF}')"
  if [[ -z "${want}" ]]; then
    [[ -f "${stamp}" ]] && return 0  # unpacked by an earlier call on this machine
    echo "gpu_env: no .deb files in ${debs} and no unpacked root in ${GPU_SYSROOT}" \
      "(run scripts/fetch_debs.sh here and carry .debs)" >&2
    return 1
  fi
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]] && return 0
  rm -rf "${GPU_SYSROOT}"
  mkdir -p "${GPU_SYSROOT}"
  for f in "${debs}"/*.deb; do
    dpkg -x "${f}" "${GPU_SYSROOT}" || { echo "gpu_env: dpkg -x ${f} failed" >&2; return 1; }
  done
  printf '%s\n' "${want}" > "${stamp}"
}

# Configures ${GPU_BUILD} (Ninja, Release, CUDA) against the unpacked root; extra arguments go to cmake.
gpu_configure() {
  cmake -S "${GPU_ROOT}" -B "${GPU_BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_CUDA=ON \
    -DDELTASERVE_PYTHON="$(command -v python3)" -DCMAKE_PREFIX_PATH="${GPU_LIB}/cmake;${GPU_SYSROOT}/usr" \
    -DProtobuf_INCLUDE_DIR="${GPU_SYSROOT}/usr/include" -DProtobuf_LIBRARY="${GPU_LIB}/libprotobuf.so" \
    -DProtobuf_PROTOC_EXECUTABLE="${GPU_SYSROOT}/usr/bin/protoc" "$@"
}

# A prebuilt bundle (scripts/gpu_bundle.sh) unpacked into ${GPU_BUILD}: its binaries load the bundled Debian
# libraries and this machine's LibTorch (their build-time RPATH points at the other machine's venv).
GPU_PREBUILT=0
if [[ -f "${GPU_BUILD}/lib/.bundle" ]]; then
  GPU_PREBUILT=1
  GPU_LIB="${GPU_BUILD}/lib"
  _gpu_torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export LD_LIBRARY_PATH="${GPU_LIB}:${_gpu_torch_lib}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
  true
elif _gpu_unpack "${1:-${GPU_ROOT}/.debs}"; then
  export LD_LIBRARY_PATH="${GPU_LIB}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
  export PATH="${GPU_SYSROOT}/usr/bin:${PATH}"
  export PKG_CONFIG_PATH="${GPU_LIB}/pkgconfig" PKG_CONFIG_SYSROOT_DIR="${GPU_SYSROOT}"
else
  false
fi
