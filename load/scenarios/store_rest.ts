import type { Scenario } from "../scenario.ts";
import { mixFixtureOrders, restStoreMix } from "./store_calls.ts";

/** The same mix on the REST shims, with vegeta. */
export const storeRest: Scenario = {
  name: "store-rest",
  description: "the store's mix on the REST shims (vegeta) at 500 rps; same shares and failures as store-mix",
  model: "open",
  schedule: { kind: "constant", rate: 500 },
  durationS: 60,
  warmupS: 10,
  fixtureOrders: mixFixtureOrders,
  calls: restStoreMix,
};
