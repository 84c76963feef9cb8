# syntax=docker/dockerfile:1
# Grafana OSS with grafana-clickhouse-datasource baked in (installed in a build stage, copied into the runtime
# image), so a Grafana pod needs no internet at start. Provisioning and dashboards are mounted (deploy/grafana).
#   docker build -f deploy/docker/grafana.Dockerfile -t tailwatch/grafana:dev .
ARG GRAFANA_IMAGE=grafana/grafana:12.4.0
ARG CLICKHOUSE_PLUGIN_VERSION=4.13.0

FROM ${GRAFANA_IMAGE} AS plugins
ARG CLICKHOUSE_PLUGIN_VERSION
RUN grafana cli --pluginsDir /tmp/plugins plugins install grafana-clickhouse-datasource ${CLICKHOUSE_PLUGIN_VERSION}

FROM ${GRAFANA_IMAGE}
ENV GF_PATHS_PLUGINS=/usr/share/grafana/tailwatch-plugins
COPY --from=plugins --chown=472:0 /tmp/plugins /usr/share/grafana/tailwatch-plugins
USER 472
