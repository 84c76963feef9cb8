/** The payments service process. Configuration: services/README.md. */
import { loadServiceConfig, runServiceMain, type ServiceSetup } from "@tailwatch/kit";
import { createPayments } from "./payments.ts";

export function paymentsSetup(env: Record<string, string | undefined>): ServiceSetup {
  const config = loadServiceConfig("payments", env, (read) => ({
    maxPayments: read.integer("PAYMENTS_MAX_PAYMENTS", 200_000, 1, 10_000_000),
  }));
  return { config, bindings: () => [createPayments(config)] };
}

if (import.meta.main) await runServiceMain(() => paymentsSetup(Deno.env.toObject()));
