/**
 * Starts a service process: gRPC (API, admin, health, reflection) and HTTP (REST shim, /metrics, /healthz,
 * /readyz, /openapi.json) on their ports, events to NATS, and a drain on SIGTERM: readiness off, stop
 * accepting, finish in-flight work within the grace period, flush buffered events, exit 0.
 */
import { Health } from "@tailwatch/proto/grpc/health/v1";
import { createAdminBinding } from "./admin.ts";
import type { ServiceConfig } from "./config.ts";
import { createDisabledEventSink, createEventSink, type EventSink } from "@tailwatch/nats";
import { addBindings } from "./grpc.ts";
import { createGrpcServer } from "@tailwatch/grpc";
import { createHealth, ServingStatus } from "./health.ts";
import {
  createLogger,
  createRegistry,
  type Logger,
  lowerV8WorkerPriority,
  PROMETHEUS_CONTENT_TYPE,
  registerProcessMetrics,
  type Registry,
} from "@tailwatch/runtime";
import { buildOpenApi } from "./openapi.ts";
import { createPipeline, type Pipeline, type ServiceBinding } from "./pipeline.ts";
import { addReflection } from "./reflection.ts";
import { createRestHandler } from "./rest.ts";
import { compileRoutes } from "./routes.ts";

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
