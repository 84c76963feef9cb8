/**
 * Starts a service process: gRPC (API, admin, health, reflection) and HTTP (REST shim, /metrics, /healthz,
 * /readyz, /openapi.json) on their ports, events to NATS, and a drain on SIGTERM: readiness off, stop
 * accepting, finish in-flight work within the grace period, flush buffered events, exit 0.
 */
import { Health } from "@tailwatch/proto/grpc/health/v1";
import { createAdminBinding } from "./admin.ts";
import type { ServiceConfig } from "./config.ts";
import { createDisabledEventSink, createEventSink, type EventSink } from "./events.ts";
import { addBindings } from "./grpc.ts";
import { createGrpcServer } from "./grpc_server.ts";
import { createHealth, ServingStatus } from "./health.ts";
import { createLogger, type Logger } from "./log.ts";
import { createRegistry, PROMETHEUS_CONTENT_TYPE, registerProcessMetrics, type Registry } from "./metrics.ts";
import { buildOpenApi } from "./openapi.ts";
import { createPipeline, type Pipeline, type ServiceBinding } from "./pipeline.ts";
import { addReflection } from "./reflection.ts";
import { createRestHandler } from "./rest.ts";
import { compileRoutes } from "./routes.ts";
import { lowerV8WorkerPriority } from "./thread_priority.ts";

/**
 * Deno flags a service process runs with (`deno run -A <flags> services/<name>/main.ts`; ./dev up and the
 * benchmarks use them).
 *
 * Why `--no-allocation-site-pretenuring`: measured, at 1000 orders/s on two cores, orders' young-generation
 * scavenges paused it for 8-12 ms (median) every ~630 ms with V8's pretenuring and 4-5 ms without, over four
 * paired runs (load/README.md, "What the tail is made of"). The likely reason: pretenured per-request objects
 * live in the old generation and point at young ones, which every scavenge must then trace.
 *
 * Why `--max-semi-space-size=4` (MB): V8 grows the young generation as a service's kept state grows, and each
 * scavenge then copies more survivors at once. At 1000 orders/s the three services' median scavenge pause
 * went from 0.9 ms in the first minute to 1.6-2.4 ms in the third (maximum 5-6 ms), and p99 with it: three 60 s
 * runs in a row gave 4.87 / 9.46 / 7.06 and 4.83 / 7.33 / 7.29 ms. Capped at 4 MB the pauses stayed at 0.5 ms
 * (maximum 2-4 ms) and p99 at 4.60 / 4.78 / 4.78 and 4.71 / 3.97 / 5.98 ms, at the same CPU per order
 * (load/README.md, 2026-12-04).
 */
export const SERVICE_DENO_FLAGS: readonly string[] = [
  "--v8-flags=--no-allocation-site-pretenuring,--max-semi-space-size=4",
];

export interface RunningService extends AsyncDisposable {
  readonly config: ServiceConfig;
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly pipeline: Pipeline;
  readonly events: EventSink;
  readonly metrics: Registry;
  readonly logger: Logger;
  /** Readiness off, stop accepting, finish in-flight work, flush events. Resolves when all is done. */
  drain(): Promise<void>;
}

export interface ServiceSetup {
  config: ServiceConfig;
  /** Builds the API bindings; gets the process's metrics and logger for its own instruments. */
  bindings(tools: { metrics: Registry; logger: Logger }): ServiceBinding[];
  /** Called after the servers stopped and before events are flushed (e.g. to close clients). */
  onDrained?(): Promise<void> | void;
  /** Replace the events sink (tests); otherwise from the config. */
  events?: EventSink;
}

export async function startService(setup: ServiceSetup): Promise<RunningService> {
  const { config } = setup;
  const logger = createLogger(config.logLevel, { service: config.service, instance: config.instanceId });
  const metrics = createRegistry();
  registerProcessMetrics(metrics);
  const events = setup.events ?? (config.eventsEnabled
    ? createEventSink({
      service: config.service,
      nats: config.nats,
      capacity: config.eventBufferCapacity,
      concurrency: config.eventPublishConcurrency,
      publishIntervalMs: config.eventPublishIntervalMs,
      eventsPerMessage: config.eventsPerMessage,
      partitions: config.eventPartitions,
      logger,
      metrics,
    })
    : createDisabledEventSink(metrics));
  const pipeline = createPipeline({
    service: config.service,
    instanceId: config.instanceId,
    maxInFlight: config.maxInFlight,
    faults: config.faults,
    events,
    metrics,
    logger,
  });
  const apiBindings = setup.bindings({ metrics, logger });
  const bindings = [...apiBindings, createAdminBinding(pipeline, config.adminToken)];

  const grpcServer = createGrpcServer({
    maxReceiveBytes: config.maxBodyBytes,
    limits: config.http2,
    // A burst on one connection starts half the process's admission slots a turn at most: the other
    // connections' calls are seen in between.
    maxCallsPerTurn: Math.max(1, Math.ceil(config.maxInFlight / 2)),
    metrics,
    logger,
  });
  addBindings(grpcServer, pipeline, bindings);
  const health = createHealth(grpcServer, bindings.map((b) => b.service.typeName));
  addReflection(grpcServer, bindings.map((b) => b.service), [Health]);
  const grpcPort = await grpcServer.listen(config.host, config.grpcPort);

  const routes = compileRoutes(bindings);
  const openapi = JSON.stringify(buildOpenApi(`Tailwatch ${config.service}`, "1.0.0", routes));
  const restHandler = createRestHandler({
    pipeline,
    routes,
    maxBodyBytes: config.maxBodyBytes,
    operational(request, path) {
      if (request.method !== "GET") return undefined;
      switch (path) {
        case "/metrics":
          return new Response(metrics.render(), { headers: { "content-type": PROMETHEUS_CONTENT_TYPE } });
        case "/healthz":
          return Response.json({ status: "alive" });
        case "/readyz": {
          // The whole process: serving (not draining) and its events reaching JetStream. The gRPC health
          // (what Kubernetes routes traffic by) says only whether requests are served: a NATS problem buffers
          // events, it never stops requests.
          const serving = health.isServing();
          const eventsReadiness = events.readiness();
          const ready = serving && eventsReadiness.ready;
          return Response.json({
            status: ready ? "SERVING" : "NOT_SERVING",
            reason: serving ? eventsReadiness.reason : "draining",
            requests: serving ? "SERVING" : "NOT_SERVING",
            events: eventsReadiness.reason,
          }, { status: ready ? 200 : 503 });
        }
        case "/openapi.json":
          return new Response(openapi, { headers: { "content-type": "application/json" } });
        default:
          return undefined;
      }
    },
  });
  let resolveHttpPort!: (port: number) => void;
  const httpPortReady = new Promise<number>((resolve) => resolveHttpPort = resolve);
  const httpServer = Deno.serve({
    hostname: config.host,
    port: config.httpPort,
    onListen: ({ port }) => resolveHttpPort(port),
    onError(error) {
      logger.error("unhandled error in the REST shim", { error });
      return Response.json({ code: 13, status: "INTERNAL", message: "internal error" }, { status: 500 });
    },
  }, restHandler);
  const httpPort = await httpPortReady;
  logger.info("serving", { grpcPort, httpPort, eventsEnabled: config.eventsEnabled });

  let draining: Promise<void> | undefined;
  const drain = () =>
    draining ??= (async () => {
      const deadline = Date.now() + config.shutdownGraceMs;
      logger.info("draining: readiness off, finishing in-flight requests", { inFlight: pipeline.inFlight() });
      health.setAll(ServingStatus.NOT_SERVING);
      health.endWatches();
      const grpcDone = grpcServer.shutdown();
      const httpDone = httpServer.shutdown();
      const timedOut = await Promise.race([
        Promise.all([grpcDone, httpDone]).then(() => false),
        new Promise<boolean>((resolve) =>
          setTimeout(() => resolve(true), Math.max(0, deadline - Date.now()))
        ),
      ]);
      if (timedOut) {
        logger.warn("grace period over: closing remaining connections", { inFlight: pipeline.inFlight() });
        grpcServer.forceShutdown();
      }
      await setup.onDrained?.();
      // Events get what is left of the grace period, and at least two seconds.
      await events.close(Math.max(2000, deadline - Date.now()));
      logger.info("drained", { pendingEvents: events.pending() });
    })();

  return {
    config,
    grpcPort,
    httpPort,
    pipeline,
    events,
    metrics,
    logger,
    drain,
    [Symbol.asyncDispose]: drain,
  };
}

/**
 * V8's worker threads belong to the process, not to one service, so the process's main sets them (tests that
 * start services inside the test runner leave its threads alone). A failure is logged, never fatal: it only
 * costs tail latency.
 */
function lowerV8Workers(nice: number, logger: Logger): void {
  if (nice === 0) return;
  try {
    const result = lowerV8WorkerPriority(nice);
    if (result.skipped) logger.warn("V8 worker threads keep their priority", { reason: result.skipped });
    else logger.info("V8 worker threads lowered in priority", { nice, threads: result.threads.length });
  } catch (error) {
    logger.warn("could not lower V8 worker threads' priority", { nice, error });
  }
}

/**
 * The main of a service process: config errors exit 2; V8's worker threads get `V8_WORKER_NICE`; SIGTERM and
 * SIGINT drain and exit 0.
 */
export async function runServiceMain(load: () => ServiceSetup): Promise<void> {
  let setup: ServiceSetup;
  try {
    setup = load();
  } catch (error) {
    console.error(String((error as Error).message ?? error));
    Deno.exit(2);
  }
  const service = await startService(setup);
  lowerV8Workers(service.config.v8WorkerNice, service.logger);
  const stop = async () => {
    await service.drain();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
}
