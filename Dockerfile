# deltaserve build image: Debian 12 with the project's dependencies, built and tested the way CI does.
# Run the server from it with: docker run -p 50051:50051 -p 9090:9090 IMAGE build/server/deltaserve
#   --vision-model models/padre-detector   (a slim serving image is not written yet)
FROM debian:12
RUN apt-get update -q && apt-get install -y -q --no-install-recommends sudo ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src/deltaserve
COPY . .
RUN scripts/setup.sh
RUN DELTASERVE_SKIP_SETUP=1 DELTASERVE_CUDA=OFF scripts/test.sh
