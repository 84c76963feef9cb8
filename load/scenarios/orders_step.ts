import type { Scenario } from "../scenario.ts";
import { orderBody } from "./store_calls.ts";

/** Where does it break: CreateOrder from 500 to 3000 rps, 500 more every 20 s. */
export const ordersStep: Scenario = {
  name: "orders-step",
  description: "orders.CreateOrder stepping 500 → 3000 rps by 500 every 20 s (two minutes), gRPC",
  model: "open",
  schedule: { kind: "step", start: 500, step: 500, everyS: 20, end: 3000 },
  durationS: 120,
  warmupS: 5,
  calls: () => [{
    label: "buy: create an order",
    service: "orders",
    method: "orders.v1.OrderService/CreateOrder",
    protocol: "grpc",
    weight: 1,
    expect: "OK",
    data: Array.from({ length: 10 }, (_, i) => orderBody(i)),
  }],
};
