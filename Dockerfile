# deltaserve build image: Debian 12 with the project's dependencies, built and tested the way CI does.
# (The serving image with the server binary and an entrypoint arrives with the server itself.)
FROM debian:12
RUN apt-get update -q && apt-get install -y -q --no-install-recommends sudo ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src/deltaserve
COPY . .
RUN scripts/setup.sh
RUN DELTASERVE_SKIP_SETUP=1 DELTASERVE_CUDA=OFF scripts/test.sh
