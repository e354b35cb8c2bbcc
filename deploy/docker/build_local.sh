#!/usr/bin/env bash
# Builds the runtime image from binaries built on this machine (the Dockerfile with ARTIFACTS=prebuilt:
# no builder stage, no registry) and smoke-tests it: the container runs as it would under the
# Kubernetes manifests (non-root, read-only root file system, all capabilities dropped), and health, a
# generation and a detection are called against it from outside. Prints the image size.
#   deploy/docker/build_local.sh BUILD_DIR [TAG]     (default tag deltaserve:cpu; deltaserve:cuda for a
#                                                     CUDA build)
# The build folder: -DDELTASERVE_NATIVE=OFF (the image runs on other CPUs), Release, targets deltaserve,
# deltaserve-cli and deltaserve-generate; docs/deploy.md has the command. Needs podman and the base
# images of make_debian_base.sh. Set PODMAN to add global options (this sandbox needs
# "podman --runtime runc" with CONTAINERS_CONF pointing at a file with default_ulimits = []).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$(realpath "${1:?usage: $0 BUILD_DIR [TAG]}")"
tag="${2:-deltaserve:cpu}"
podman=(${PODMAN:-podman})
grep -q 'DELTASERVE_NATIVE:BOOL=OFF' "${build}/CMakeCache.txt" ||
  { echo "build_local: ${build} was built with -march=native; reconfigure with -DDELTASERVE_NATIVE=OFF" >&2; exit 1; }
"${root}/scripts/stage_runtime.sh" "${build}" "${root}/build-stage"
"${podman[@]}" build --format docker --build-arg ARTIFACTS=prebuilt \
  --build-arg RUNTIME_BASE="${RUNTIME_BASE:-localhost/debian:12-slim}" -t "${tag}" "${root}"
size="$("${podman[@]}" image inspect "${tag}" --format '{{.Size}}')"
echo "build_local: ${tag} is $((size / 1000000)) MB"

# Smoke test, on the host's network with the image's default ports (50051, 9090: the HEALTHCHECK probes
# 50051) and the Kubernetes security settings.
name="deltaserve-smoke-$$"
cleanup() { "${podman[@]}" rm -f "${name}" > /dev/null 2>&1 || true; }
trap cleanup EXIT
"${podman[@]}" run -d --name "${name}" --network host --read-only --cap-drop ALL --user 10001:10001 \
  --security-opt no-new-privileges "${tag}" > /dev/null
cli=("${podman[@]}" exec "${name}" deltaserve-cli --server 127.0.0.1:50051)
for _ in $(seq 60); do "${cli[@]}" health > /dev/null 2>&1 && break; sleep 1; done
"${cli[@]}" health
"${podman[@]}" healthcheck run "${name}" 2> /dev/null  # fails the script when unhealthy
echo "build_local: the image's HEALTHCHECK passes"
"${cli[@]}" generate "The weather today" --max-tokens 16 --temperature 0
"${cli[@]}" detect /opt/deltaserve/share/deltaserve/models/padre-detector/sample.png
# /metrics serves (on the host's network, which cannot tell a loopback bind from an all-address one; the
# image's command sets --metrics-host 0.0.0.0 for containers with their own network).
series="$(curl -sf http://127.0.0.1:9090/metrics | grep -c '^deltaserve_')"
echo "build_local: /metrics from the host: ${series} deltaserve series"
[[ "${series}" -gt 0 ]]
"${podman[@]}" exec "${name}" sh -c 'id; touch /opt/deltaserve/x 2>&1 || true'
"${podman[@]}" stop -t 40 "${name}" > /dev/null
"${podman[@]}" logs "${name}" 2>&1 | tail -3
echo "build_local: ${tag} passed the smoke test"
