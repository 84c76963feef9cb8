import type { Scenario } from "../scenario.ts";
import { grpcStoreMix, mixFixtureOrders } from "./store_calls.ts";

/** The store as its users use it, over gRPC: browse, buy, after-sales, and some calls that fail on purpose. */
export const storeMix: Scenario = {
  name: "store-mix",
  description:
    "the store's mix over gRPC at 1000 rps: list/get products 55 %, CreateOrder 22 %, get/list/cancel orders " +
    "and refunds 23 %; 1 in 10 GetProduct unknown (NOT_FOUND), 1 in 10 orders with a declined card",
  model: "open",
  schedule: { kind: "constant", rate: 1000 },
  durationS: 60,
  warmupS: 10,
  fixtureOrders: mixFixtureOrders,
  calls: grpcStoreMix,
};
