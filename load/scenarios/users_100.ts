import type { Scenario } from "../scenario.ts";
import { browseAndBuy } from "./store_calls.ts";

/** Closed model: 100 users, each sending its next request as soon as the last one answered (no think time). */
export const users100: Scenario = {
  name: "users-100",
  description: "closed model: 100 concurrent users, 80 % GetProduct / 20 % CreateOrder, no think time, gRPC",
  model: "closed",
  users: 100,
  durationS: 30,
  warmupS: 5,
  calls: browseAndBuy,
};
