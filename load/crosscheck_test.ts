import { assert, assertEquals } from "@tailwatch/testing";
import { crossCheck, type CrossCheckInput, type RowCount } from "./crosscheck.ts";
import { quantiles } from "./latency.ts";

const CREATE = "/orders.v1.OrderService/CreateOrder";
const RESERVE = "/catalog.v1.CatalogService/ReserveStock";
const GET = "/catalog.v1.CatalogService/GetProduct";

const row = (
  service: string,
  method: string,
  protocol: string,
  grpcCode: number,
  rows: number,
  extra: Partial<RowCount> = {},
): RowCount => ({
  service,
  method,
  protocol,
  grpcCode,
  httpStatus: protocol === "http" ? (grpcCode === 0 ? 200 : 404) : 200,
  rows,
  distinct: rows,
  root: service === "orders" || method === GET ? rows : 0,
  ...extra,
});

/** 1000 orders (999 OK, one cancelled by ghz at the end that orders still served), each a ReserveStock. */
function input(): CrossCheckInput {
  return {
    generator: [
      {
        service: "orders",
        method: CREATE,
        protocol: "grpc",
        byStatus: { OK: 999 },
        cancelled: 1,
        cancelledAs: { "UNAVAILABLE: transport is closing": 1 },
      },
      {
        service: "catalog",
        method: GET,
        protocol: "http",
        byStatus: { "HTTP 200": 90, "HTTP 404": 10 },
        cancelled: 0,
        cancelledAs: {},
      },
    ],
    metrics: [
      {
        service: "orders",
        requests: { [`${CREATE}|grpc|OK`]: 1000 },
        eventsPublished: 1000,
        eventsDropped: 0,
        eventsDisabled: 0,
      },
      {
        service: "catalog",
        requests: { [`${RESERVE}|grpc|OK`]: 1000, [`${GET}|http|OK`]: 90, [`${GET}|http|NOT_FOUND`]: 10 },
        eventsPublished: 1100,
        eventsDropped: 0,
        eventsDisabled: 0,
      },
    ],
    rows: [
      row("orders", CREATE, "grpc", 0, 1000),
      row("catalog", RESERVE, "grpc", 0, 1000),
      row("catalog", GET, "http", 0, 90),
      row("catalog", GET, "http", 5, 10),
    ],
    otherRows: [],
    latency: [{
      service: "orders",
      method: CREATE,
      protocol: "grpc",
      client: quantiles([900, 1000, 5000]),
      server: quantiles([500, 600, 4000]),
    }],
    selection: "run-id",
    settledAfterMs: 800,
  };
}

Deno.test("cross-check: counts that agree pass, with the cancelled call accounted for as served", () => {
  const check = crossCheck(input());
  assertEquals(check.failures, []);
  assert(check.ok);
  const create = check.lines.find((l) => l.method === CREATE)!;
  assertEquals([create.generator, create.metrics, create.rows, create.distinct, create.cancelledSeen], [
    999,
    1000,
    1000,
    1000,
    1,
  ]);
  assertEquals(check.cancelled[0].seenByServer, { OK: 1 });
  assertEquals(check.cancelled[0].notSeenByServer, 0);
  // REST: a line per HTTP status against the generator, a line per code against the counters.
  assertEquals(
    check.lines.filter((l) => l.method === GET).map((l) =>
      `${l.status}:${l.generator ?? "-"}:${l.metrics ?? "-"}`
    ).sort(),
    [
      "HTTP 200:90:-",
      "HTTP 404:10:-",
      "NOT_FOUND:-:10",
      "OK:-:90",
    ],
  );
  assertEquals(
    check.lines.find((l) => l.method === RESERVE)!.generator,
    undefined,
    "downstream: no generator count",
  );
});

Deno.test("cross-check: a lost row, a duplicate, a dropped event and too many rows each fail, named", () => {
  const lost = input();
  lost.rows[0] = row("orders", CREATE, "grpc", 0, 998);
  assert(
    crossCheck(lost).failures.some((f) => f.includes("orders") && f.includes("counters 1000 ≠ rows 998")),
  );
  assert(crossCheck(lost).failures.some((f) => f.includes("1 answered calls have no row")));

  const duplicate = input();
  duplicate.rows[1] = row("catalog", RESERVE, "grpc", 0, 1000, { distinct: 999 });
  assert(crossCheck(duplicate).failures.some((f) => f.includes("1 duplicate rows")));

  const dropped = input();
  dropped.metrics[0] = { ...dropped.metrics[0], eventsPublished: 999, eventsDropped: 1 };
  assert(crossCheck(dropped).failures.some((f) => f.includes("orders events: 1 events dropped")));

  // Two rows above the generator's answers, but it cancelled only one call.
  const tooMany = input();
  tooMany.rows[0] = row("orders", CREATE, "grpc", 0, 1001);
  tooMany.metrics[0].requests[`${CREATE}|grpc|OK`] = 1001;
  tooMany.metrics[0].eventsPublished = 1001;
  assert(!crossCheck(tooMany).ok);
  assert(crossCheck(tooMany).failures.some((f) => f.includes("more rows than answers plus cancelled calls")));
});

Deno.test("cross-check: a cancelled call the server never saw, other traffic, and the latency order", () => {
  const unseen = input();
  unseen.rows[0] = row("orders", CREATE, "grpc", 0, 999);
  unseen.metrics[0].requests[`${CREATE}|grpc|OK`] = 999;
  unseen.metrics[0].eventsPublished = 999;
  const check = crossCheck(unseen);
  assert(check.ok, check.failures.join("; "));
  assertEquals(check.cancelled[0].notSeenByServer, 1);

  // Other traffic on the stack during the run: the counters include it, the run's rows do not.
  const shared = input();
  shared.metrics[1].requests[`${GET}|http|OK`] = 95;
  shared.metrics[1].eventsPublished = 1105;
  shared.otherRows = [row("catalog", GET, "http", 0, 5)];
  const sharedCheck = crossCheck(shared);
  assert(sharedCheck.ok, sharedCheck.failures.join("; "));
  assertEquals(sharedCheck.lines.find((l) => l.method === GET && l.status === "OK")!.metricsOther, 5);

  // A method the generator calls that orders also calls (payments.Refund): only root spans are the generator's.
  const both = input();
  both.rows[2] = row("catalog", GET, "http", 0, 95, { root: 90 });
  both.metrics[1].requests[`${GET}|http|OK`] = 95;
  both.metrics[1].eventsPublished = 1105;
  assert(crossCheck(both).ok, crossCheck(both).failures.join("; "));

  const inverted = input();
  inverted.latency[0].server = quantiles([900, 2000, 6000]);
  assert(crossCheck(inverted).failures.some((f) => f.includes("server percentiles above the client's")));
  const none = input();
  none.rows = none.rows.filter((r) => r.service !== "orders");
  assert(crossCheck(none).failures.some((f) => f.includes("no rows for the run")));
});
