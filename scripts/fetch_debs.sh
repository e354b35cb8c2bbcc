#!/usr/bin/env bash
# Downloads (does not install) the Debian 12 packages that scripts/gpu_check.sh unpacks on a GPU machine
# that cannot install packages: Abseil, GoogleTest, gRPC, protobuf, prometheus-cpp, and the tokenizer's
# PCRE2, ICU and nlohmann-json, and the image codecs deltaserve loads (the GPU image lacks them). Into .debs/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "${root}/.debs"
cd "${root}/.debs"
apt-get download libabsl-dev libabsl20220623 libgtest-dev libgmock-dev libgrpc++-dev libgrpc++1.51 libgrpc-dev \
  libgrpc29 libprotobuf-dev libprotobuf32 libprotoc32 libre2-9 libre2-dev libc-ares2 libc-ares-dev \
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 \
  libcivetweb1 libcivetweb-dev civetweb protobuf-compiler protobuf-compiler-grpc \
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libicu-dev libicu72 nlohmann-json3-dev \
  libjpeg62-turbo libpng16-16
