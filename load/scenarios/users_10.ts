import type { Scenario } from "../scenario.ts";
import { browseAndBuy } from "./store_calls.ts";

/** Closed model: 10 users, each sending its next request as soon as the last one answered (no think time). */
export const users10: Scenario = {
  name: "users-10",
  description: "closed model: 10 concurrent users, 80 % GetProduct / 20 % CreateOrder, no think time, gRPC",
  model: "closed",
  users: 10,
  durationS: 30,
  warmupS: 5,
  calls: browseAndBuy,
};
