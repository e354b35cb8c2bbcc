# deltaserve container images, in two stages:
#   builder  Debian 12 with the build dependencies (scripts/setup.sh) builds the three binaries and stages
#            them with every shared library they load and the shipped models (scripts/stage_runtime.sh);
#   runtime  a slim Debian 12 holding only that tree: non-root, gRPC health check, nothing of the build.
#
#   docker build -t deltaserve:cpu .                             # CPU
#   docker build --build-arg DEVICE=cuda -t deltaserve:cuda .    # CUDA (nvcc from PyPI; needs the NVIDIA
#                                                                  # container toolkit to run on a GPU)
#   deploy/docker/build_local.sh                                 # binaries built outside: ARTIFACTS=prebuilt
#
# Run: docker run -p 50051:50051 -p 9090:9090 deltaserve:cpu [deltaserve flags]   (default: both shipped
# models, text and vision, /metrics on all addresses). docs/deploy.md has the details.
ARG BASE=debian:12
ARG RUNTIME_BASE=debian:12-slim
# builder: build from source here; prebuilt: take build-stage/ from the context (deploy/docker/build_local.sh).
ARG ARTIFACTS=builder

FROM ${BASE} AS builder
ARG DEVICE=cpu
# Versions come from the Debian release (bookworm's point releases only fix bugs); pinning exact package
# versions would break the build whenever the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update -q && apt-get install -y -q --no-install-recommends sudo ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src/deltaserve
COPY . .
# The PyTorch wheel's LibTorch links the binaries. For CUDA, the compiler comes from NVIDIA's PyPI wheels
# of the CUDA release of the torch wheel's runtime (13.0): nvcc, its cicc (nvvm) and the CCCL headers,
# merged into the venv's nvidia/cu13 tree beside the runtime; CMake's CUDA::cudart wants the unversioned
# libcudart.so. (Checked: this tree configures and compiles the CUDA sources.)
RUN scripts/setup.sh \
    && if [ "${DEVICE}" = cuda ]; then . scripts/env.sh \
         && "${DELTASERVE_VENV}/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" \
              "nvidia-cuda-cccl==13.0.*" \
         && nv="$("${DELTASERVE_PYTHON}" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')" \
         && ln -sf libcudart.so.13 "${nv}/lib/libcudart.so"; fi
RUN . scripts/env.sh \
    && cuda=OFF && if [ "${DEVICE}" = cuda ]; then cuda=ON; \
         nv="$("${DELTASERVE_PYTHON}" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')"; \
         export CUDACXX="${nv}/bin/nvcc" CUDAToolkit_ROOT="${nv}"; fi \
    && cmake -S . -B build-image -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_NATIVE=OFF \
         -DDELTASERVE_CUDA="${cuda}" -DDELTASERVE_BUILD_TESTS=OFF -DDELTASERVE_BUILD_BENCH=OFF \
         -DDELTASERVE_PYTHON="${DELTASERVE_PYTHON}" \
    && cmake --build build-image --target deltaserve deltaserve-cli deltaserve-generate \
    && scripts/stage_runtime.sh build-image /opt/deltaserve

FROM scratch AS prebuilt
COPY build-stage/ /opt/deltaserve/

FROM ${ARTIFACTS} AS artifacts

FROM ${RUNTIME_BASE} AS runtime
COPY --from=artifacts /opt/deltaserve /opt/deltaserve
# The staged libraries go on the loader's path for the binaries and the libraries they load alike; the
# user owns nothing: the root file system can be mounted read-only (the server writes no file).
RUN echo /opt/deltaserve/lib > /etc/ld.so.conf.d/deltaserve.conf && ldconfig \
    && groupadd --gid 10001 deltaserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin deltaserve
ENV PATH=/opt/deltaserve/bin:${PATH} \
    DELTASERVE_MODEL_DIR=/opt/deltaserve/share/deltaserve/models/qwen35-small
USER 10001:10001
# gRPC, then Prometheus /metrics.
EXPOSE 50051 9090
# Model loading takes seconds for the shipped models and minutes for large ones: the start period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["deltaserve-cli", "--server", "127.0.0.1:50051", "--timeout", "4", "health"]
ENTRYPOINT ["deltaserve"]
CMD ["--metrics-host", "0.0.0.0", "--vision-model", "/opt/deltaserve/share/deltaserve/models/padre-detector"]
