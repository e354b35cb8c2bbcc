#!/usr/bin/env bash
# Makes the two base images the Dockerfile starts from, without an image registry: Debian 12 from
# Debian's own mirror by debootstrap (minbase), imported into podman as localhost/debian:12, and a slim
# copy without documentation, manuals, locales and apt lists as localhost/debian:12-slim (what
# debian:12-slim is on Docker Hub). Needs root, debootstrap and podman (Debian packages).
#   deploy/docker/make_debian_base.sh [WORK_DIR]     (default /var/tmp/deltaserve-base; about 5 minutes)
set -euo pipefail
work="${1:-/var/tmp/deltaserve-base}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "${work}"
if [[ ! -x "${work}/rootfs/bin/bash" ]]; then
  rm -rf "${work}/rootfs"
  echo "make_debian_base: debootstrap bookworm from ${mirror} into ${work}/rootfs"
  debootstrap --variant=minbase bookworm "${work}/rootfs" "${mirror}" > "${work}/debootstrap.log"
fi
tar -C "${work}/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - localhost/debian:12 > /dev/null
rm -rf "${work}/slim" && cp -a "${work}/rootfs" "${work}/slim"
(cd "${work}/slim" && rm -rf usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* \
  var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb var/log/*.log)
tar -C "${work}/slim" -c . | podman import --change 'CMD ["/bin/bash"]' - localhost/debian:12-slim > /dev/null
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep 'localhost/debian:12'
