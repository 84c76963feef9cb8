import type { Scenario } from "../scenario.ts";
import { createOrderCalls } from "./store_calls.ts";

/** Where does it break: CreateOrder from 500 to 3000 rps, 500 more every 20 s. */
export const ordersStep: Scenario = {
  name: "orders-step",
  description: "orders.CreateOrder stepping 500 → 3000 rps by 500 every 20 s (two minutes), gRPC",
  model: "open",
  schedule: { kind: "step", start: 500, step: 500, everyS: 20, end: 3000 },
  durationS: 120,
  warmupS: 5,
  calls: createOrderCalls,
};
