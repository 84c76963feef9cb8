# syntax=docker/dockerfile:1
# Every Deno program of Tailwatch in one image: the services, ingest, web, the setup step and the alert webhook;
# compose and k8s choose the program with the command (`deno run --cached-only -A <entry point>`). Build from the
# repository root:
#   docker build -f deploy/docker/deno.Dockerfile -t tailwatch/deno-app:dev .
# Stage 1 resolves and caches every dependency (npm packages from deno.lock, frozen) and type-checks nothing; the
# runtime stage holds Deno, the source and the cache only, and runs as the image's unprivileged user `deno`.
# The Deno release is the one ./dev installs (tools/package.json); deploy/manifests_test.ts keeps them equal.
ARG DENO_VERSION=2.9.3

FROM denoland/deno:debian-${DENO_VERSION} AS build
ENV DENO_DIR=/deno-dir DENO_NO_UPDATE_CHECK=1
WORKDIR /app
COPY . .
RUN deno install --frozen \
  && deno cache --frozen \
    services/catalog/main.ts services/orders/main.ts services/payments/main.ts \
    ingest/main.ts web/main.ts deploy/setup.ts deploy/alert_webhook.ts

FROM denoland/deno:debian-${DENO_VERSION}
ENV DENO_DIR=/deno-dir DENO_NO_UPDATE_CHECK=1
WORKDIR /app
# The cache stays writable for Deno's own bookkeeping; the source is read-only to the user that runs it.
COPY --from=build --chown=deno:deno /deno-dir /deno-dir
COPY --from=build /app /app
USER deno
CMD ["deno", "--version"]
