/** The orders service process. Configuration: services/README.md. */
import { CatalogService } from "@tailwatch/proto/catalog/v1";
import { PaymentService } from "@tailwatch/proto/payments/v1";
import { createClient } from "@tailwatch/grpc";
import { loadServiceConfig, runServiceMain, type ServiceSetup } from "@tailwatch/kit";
import { createOrders } from "./orders.ts";

export function ordersSetup(env: Record<string, string | undefined>): ServiceSetup {
  const config = loadServiceConfig("orders", env, (read) => ({
    catalogAddress: read.hostPort("CATALOG_ADDR", "127.0.0.1:50051"),
    paymentsAddress: read.hostPort("PAYMENTS_ADDR", "127.0.0.1:50053"),
    upstreamTimeoutMs: read.integer("UPSTREAM_TIMEOUT_MS", 2000, 1, 60_000),
    maxOrders: read.integer("ORDERS_MAX_ORDERS", 200_000, 1, 10_000_000),
  }));
  const catalog = createClient(CatalogService, config.catalogAddress);
  const payments = createClient(PaymentService, config.paymentsAddress);
  return {
    config,
    bindings: ({ logger }) => [createOrders(config, { catalog, payments, logger })],
    onDrained() {
      catalog.close();
      payments.close();
    },
  };
}

if (import.meta.main) await runServiceMain(() => ordersSetup(Deno.env.toObject()));
