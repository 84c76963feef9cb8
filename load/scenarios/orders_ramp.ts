import type { Scenario } from "../scenario.ts";
import { createOrderCalls } from "./store_calls.ts";

/** A steady climb: CreateOrder from 100 to 2000 rps over a minute. */
export const ordersRamp: Scenario = {
  name: "orders-ramp",
  description: "orders.CreateOrder ramping 100 → 2000 rps over 60 s (the rate changes once a second), gRPC",
  model: "open",
  schedule: { kind: "ramp", from: 100, to: 2000 },
  durationS: 60,
  warmupS: 5,
  calls: createOrderCalls,
};
