#!/usr/bin/env bash
# Soak test of the built server (tests/e2e/soak.py): MINUTES of mixed streaming load at 2x the slots with
# cancellations and deadlines, every token checked against solo runs, resident memory sampled, then
# SIGTERM under load. Prints lost/duplicated tokens, RSS growth and the drain; exits 1 on a failure.
#   scripts/soak.sh [MINUTES] [soak.py flags]     (default 2 minutes; BUILD_DIR defaults to build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/scripts/env.sh"
minutes="${1:-2}"
shift || true
exec "${DELTASERVE_PYTHON}" "${root}/tests/e2e/soak.py" --server "${BUILD_DIR:-${root}/build}/server/deltaserve" \
  --repo "${root}" --minutes "${minutes}" "$@"
