/** Every load scenario, by name: `./dev load --list` prints them. One small file each. */
import type { Scenario } from "../scenario.ts";
import { ordersCreate } from "./orders_create.ts";
import { ordersStep } from "./orders_step.ts";
import { ordersRamp } from "./orders_ramp.ts";
import { storeMix } from "./store_mix.ts";
import { storeRest } from "./store_rest.ts";
import { users10 } from "./users_10.ts";
import { users100 } from "./users_100.ts";
import { users1000 } from "./users_1000.ts";

export const SCENARIOS: readonly Scenario[] = [
  ordersCreate,
  ordersStep,
  ordersRamp,
  storeMix,
  storeRest,
  users10,
  users100,
  users1000,
];

export function findScenario(name: string): Scenario | undefined {
  return SCENARIOS.find((scenario) => scenario.name === name);
}
