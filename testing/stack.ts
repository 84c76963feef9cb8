/**
 * Test helpers: the three services in this process (ports picked by the OS) against a given NATS, and a
 * reader for the events they published. Everything is disposable with `await using`.
 */
import type { RequestEvent } from "@tailwatch/proto/events/v1";
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { OrderService } from "@tailwatch/proto/orders/v1";
import { PaymentService } from "@tailwatch/proto/payments/v1";
import { AdminService } from "@tailwatch/proto/admin/v1";
import { applyRequestEventsStream } from "@tailwatch/nats";
import { createClient, type ServiceClient } from "@tailwatch/grpc";
import { eventsOfMessage, REQUEST_EVENTS_STREAM } from "@tailwatch/events";
import { type RunningService, startService } from "@tailwatch/kit";
import { readStreamMessages } from "./stream_reader.ts";
import { catalogSetup } from "@tailwatch/catalog";
import { paymentsSetup } from "@tailwatch/payments";
import { ordersSetup } from "@tailwatch/orders";

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

/**
 * Starts catalog, payments and orders (wired to the other two) with `env` added to every service's. The stream is
 * applied first by the setup step's function, as deploy/setup.ts and ./dev up do: the services only check it.
 */
export async function startStack(natsUrl: string, env: Record<string, string> = {}): Promise<Stack> {
  await applyRequestEventsStream(natsUrl);
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

/** Every event in the stream, in stream order. */
export async function readAllEvents(natsUrl: string): Promise<RequestEvent[]> {
  const messages = await readStreamMessages(natsUrl, REQUEST_EVENTS_STREAM);
  return messages.flatMap((message) => eventsOfMessage(message.data, message.eventCount));
}
