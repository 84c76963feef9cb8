import type { Scenario } from "../scenario.ts";
import { browseAndBuy } from "./store_calls.ts";

/** Closed model: 1000 users, each sending its next request as soon as the last one answered (no think time). */
export const users1000: Scenario = {
  name: "users-1000",
  description: "closed model: 1000 concurrent users, 80 % GetProduct / 20 % CreateOrder, no think time, gRPC",
  model: "closed",
  users: 1000,
  durationS: 30,
  warmupS: 5,
  calls: browseAndBuy,
};
