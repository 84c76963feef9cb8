import type { Scenario } from "../scenario.ts";
import { createOrderCalls } from "./store_calls.ts";

/** The headline: orders.CreateOrder (fanning out to catalog and payments) at 1000 rps for 60 s. */
export const ordersCreate: Scenario = {
  name: "orders-create",
  description:
    "headline: orders.CreateOrder (reserve in catalog, charge in payments) at a constant 1000 rps, gRPC",
  model: "open",
  schedule: { kind: "constant", rate: 1000 },
  durationS: 60,
  warmupS: 10,
  calls: createOrderCalls,
};
