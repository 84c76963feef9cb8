/** The catalog service process. Configuration: services/README.md. */
import { loadServiceConfig, runServiceMain, type ServiceSetup } from "@tailwatch/kit";
import { createCatalog } from "./catalog.ts";

export function catalogSetup(env: Record<string, string | undefined>): ServiceSetup {
  const config = loadServiceConfig("catalog", env, (read) => ({
    maxProducts: read.integer("CATALOG_MAX_PRODUCTS", 10_000, 1, 1_000_000),
    maxReservations: read.integer("CATALOG_MAX_RESERVATIONS", 200_000, 1, 10_000_000),
    seedStock: read.integer("CATALOG_SEED_STOCK", 1_000_000_000, 0, 2_000_000_000),
  }));
  return { config, bindings: () => [createCatalog(config)] };
}

if (import.meta.main) await runServiceMain(() => catalogSetup(Deno.env.toObject()));
