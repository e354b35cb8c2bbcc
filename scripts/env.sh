# Shared paths for setup.sh and test.sh: where the machine-wide caches live, keyed by pinned versions.
# Source it; it defines DELTASERVE_VENV, CCACHE_DIR and DELTASERVE_PYTHON.
_ds_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${_ds_scripts}/versions.env"
DELTASERVE_CACHE="${DELTASERVE_CACHE:-/var/cache/deltaserve}"
# Key the venv by the interpreter and every pinned Python package, so a version bump builds a new one
# and repeated runs on one machine reuse the old.
_ds_pyver="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)"
_ds_pins="torch${TORCH_VERSION}-np${NUMPY_VERSION}-tf${TRANSFORMERS_VERSION}-tok${TOKENIZERS_VERSION}-st${SAFETENSORS_VERSION}-grpc${GRPCIO_VERSION}"
DELTASERVE_VENV="${DELTASERVE_VENV:-${DELTASERVE_CACHE}/venv-py${_ds_pyver}-${_ds_pins}}"
DELTASERVE_PYTHON="${DELTASERVE_VENV}/bin/python"
export CCACHE_DIR="${CCACHE_DIR:-${DELTASERVE_CACHE}/ccache}"
export DELTASERVE_CACHE DELTASERVE_VENV DELTASERVE_PYTHON
