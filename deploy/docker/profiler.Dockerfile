# syntax=docker/dockerfile:1
# The profiler (native/profiler): built with Debian's compiler and libraries in one stage, copied alone into a slim
# runtime stage with only libcurl, run as an unprivileged user. Build from the repository root:
#   docker build -f deploy/docker/profiler.Dockerfile -t tailwatch/profiler:dev .
# Health: the exec probe `tailwatch-profiler --once --json --windows 10` (deploy/README.md).
ARG DEBIAN_IMAGE=debian:12.12-slim

FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
  && apt-get install -y --no-install-recommends cmake make g++ libcurl4-openssl-dev nlohmann-json3-dev \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY native/profiler/ ./
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTAILWATCH_TESTS=OFF -DTAILWATCH_BENCH=OFF \
  && cmake --build build --target tailwatch-profiler -j "$(nproc)" \
  && strip build/tailwatch-profiler

FROM ${DEBIAN_IMAGE}
RUN apt-get update \
  && apt-get install -y --no-install-recommends libcurl4 ca-certificates \
  && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/tailwatch-profiler /usr/local/bin/tailwatch-profiler
USER 65532:65532
ENTRYPOINT ["tailwatch-profiler"]
