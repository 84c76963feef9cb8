/**
 * Test helpers: the three services in this process (ports picked by the OS) against a given NATS, and a
 * reader for the events they published. Everything is disposable with `await using`.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { type RequestEvent, RequestEventSchema } from "@tailwatch/proto/events/v1";
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { OrderService } from "@tailwatch/proto/orders/v1";
import { PaymentService } from "@tailwatch/proto/payments/v1";
import { AdminService } from "@tailwatch/proto/admin/v1";
import {
  createClient,
  REQUEST_EVENTS_STREAM,
  type RunningService,
  type ServiceClient,
  startService,
} from "@tailwatch/kit";
import { catalogSetup } from "../catalog/main.ts";
import { paymentsSetup } from "../payments/main.ts";
import { ordersSetup } from "../orders/main.ts";

export const ADMIN_TOKEN = "test-admin-token";

const quietEnv = (natsUrl: string, extra: Record<string, string>) => ({
  HOST: "127.0.0.1",
  GRPC_PORT: "0",
  HTTP_PORT: "0",
  NATS_URL: natsUrl,
  ADMIN_TOKEN,
  LOG_LEVEL: Deno.env.get("TEST_LOG_LEVEL") ?? "warn",
  SHUTDOWN_GRACE_MS: "5000",
  ...extra,
});

export interface Stack extends AsyncDisposable {
  catalog: RunningService;
  payments: RunningService;
  orders: RunningService;
  clients: {
    catalog: ServiceClient<typeof CatalogService>;
    payments: ServiceClient<typeof PaymentService>;
    orders: ServiceClient<typeof OrderService>;
    admin(service: RunningService): ServiceClient<typeof AdminService>;
  };
  rest(service: RunningService, path: string, init?: RequestInit): Promise<Response>;
}

/** Starts catalog, payments and orders (wired to the other two) with `env` added to every service's. */
export async function startStack(natsUrl: string, env: Record<string, string> = {}): Promise<Stack> {
  const catalog = await startService(catalogSetup(quietEnv(natsUrl, env)));
  const payments = await startService(paymentsSetup(quietEnv(natsUrl, env)));
  const orders = await startService(ordersSetup(quietEnv(natsUrl, {
    CATALOG_ADDR: `127.0.0.1:${catalog.grpcPort}`,
    PAYMENTS_ADDR: `127.0.0.1:${payments.grpcPort}`,
    ...env,
  })));
  const clients = {
    catalog: createClient(CatalogService, `127.0.0.1:${catalog.grpcPort}`),
    payments: createClient(PaymentService, `127.0.0.1:${payments.grpcPort}`),
    orders: createClient(OrderService, `127.0.0.1:${orders.grpcPort}`),
  };
  const adminClients: ServiceClient<typeof AdminService>[] = [];
  return {
    catalog,
    payments,
    orders,
    clients: {
      ...clients,
      admin(service) {
        const client = createClient(AdminService, `127.0.0.1:${service.grpcPort}`);
        adminClients.push(client);
        return client;
      },
    },
    rest: (service, path, init) => fetch(`http://127.0.0.1:${service.httpPort}${path}`, init),
    async [Symbol.asyncDispose]() {
      for (const client of [...Object.values(clients), ...adminClients]) client.close();
      await orders.drain();
      await Promise.all([catalog.drain(), payments.drain()]);
    },
  };
}

/** Every event in the stream, in stream order, read by an ephemeral consumer. */
export async function readAllEvents(natsUrl: string): Promise<RequestEvent[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(REQUEST_EVENTS_STREAM);
    const total = info.state.messages;
    const events: RequestEvent[] = [];
    if (total === 0) return events;
    const consumer = await jsm.consumers.add(REQUEST_EVENTS_STREAM, {
      ack_policy: AckPolicy.None,
      deliver_policy: DeliverPolicy.All,
      inactive_threshold: 30_000_000_000,
    });
    const js = jetstream(nc);
    const reader = await js.consumers.get(REQUEST_EVENTS_STREAM, consumer.name);
    while (events.length < total) {
      const batch = await reader.fetch({
        max_messages: Math.min(10_000, total - events.length),
        expires: 5000,
      });
      let got = 0;
      for await (const message of batch) {
        events.push(fromBinary(RequestEventSchema, message.data));
        got++;
      }
      if (got === 0) break;
    }
    await jsm.consumers.delete(REQUEST_EVENTS_STREAM, consumer.name).catch(() => {});
    return events;
  } finally {
    await nc.close();
  }
}

/** The number of messages in the stream (0 when it does not exist yet). */
export async function streamMessageCount(natsUrl: string): Promise<number> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    return (await jsm.streams.info(REQUEST_EVENTS_STREAM)).state.messages;
  } catch {
    return 0;
  } finally {
    await nc.close();
  }
}
