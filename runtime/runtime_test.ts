/** Unit tests of what every process shares: ids and trace context, the metrics registry, bounded state. */
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { BoundedMap, createRegistry, spanFromTraceparent, traceparentOf, uuidv7 } from "./mod.ts";

Deno.test("UUIDv7 ids increase strictly within a process, even within one millisecond", () => {
  const ids = Array.from({ length: 10_000 }, () => uuidv7(1_700_000_000_000));
  for (let i = 1; i < ids.length; i++) assert(ids[i - 1] < ids[i], `${ids[i - 1]} < ${ids[i]}`);
  assert(ids[0].startsWith("018bcfe5-6800-7"), ids[0]);
});

Deno.test("traceparent: a valid header makes a child span, an invalid one starts a new trace", () => {
  const child = spanFromTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  assertEquals(child.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
  assertEquals(child.parentSpanId, "00f067aa0ba902b7");
  assert(child.spanId !== child.parentSpanId && /^[0-9a-f]{16}$/.test(child.spanId));
  assertEquals(traceparentOf(child), `00-${child.traceId}-${child.spanId}-01`);
  for (
    const bad of [
      "",
      "garbage",
      "00-" + "0".repeat(32) + "-00f067aa0ba902b7-01",
      "ff-" + "a".repeat(32) + "-" + "b".repeat(16) + "-01",
    ]
  ) {
    const root = spanFromTraceparent(bad);
    assertEquals(root.parentSpanId, "", `"${bad}" is ignored`);
    assert(/^[0-9a-f]{32}$/.test(root.traceId));
  }
});

Deno.test("UUIDv7 ids carry their millisecond, version 7 and the RFC 9562 variant", () => {
  // Increasing, and later than any id made before in this process: each id holds exactly its millisecond.
  for (const ms of [1_800_000_000_000, 2 ** 40 * 3 + 12345, 2 ** 47 + 1, 2 ** 48 - 1]) {
    const id = uuidv7(ms);
    assert(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id), id);
    assertEquals(parseInt(id.slice(0, 8) + id.slice(9, 13), 16), ms, id);
  }
});

Deno.test("traceparent parsing agrees with the W3C rules on mutated headers", () => {
  // The rules as a regular expression: the reference the hand-written parser must agree with.
  const rule = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
  const reference = (header: string) => {
    const match = rule.exec(header.trim().toLowerCase());
    return match !== null && match[1] !== "ff" && !/^0+$/.test(match[2]) && !/^0+$/.test(match[3]) &&
        (match[1] !== "00" || match[5] === undefined)
      ? match[2] + "/" + match[3]
      : "";
  };
  const random = seededRandom(5);
  const alphabet = "0123456789abcdefABCDEFxz- ";
  const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  let accepted = 0;
  for (let i = 0; i < 20_000; i++) {
    let header = random() < 0.5 ? valid : "01" + valid.slice(2) + (random() < 0.5 ? "-extra" : "");
    const edits = Math.floor(random() * 3);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(random() * (header.length + 1));
      const c = alphabet[Math.floor(random() * alphabet.length)];
      const kind = random();
      header = kind < 0.5
        ? header.slice(0, at) + c + header.slice(at + 1)
        : kind < 0.75
        ? header.slice(0, at) + c + header.slice(at)
        : header.slice(0, at) + header.slice(at + 1);
    }
    if (random() < 0.05) header = header.replace(/[1-9a-f]/g, "0");
    const span = spanFromTraceparent(header);
    const got = span.parentSpanId === "" ? "" : span.traceId + "/" + span.parentSpanId;
    assertEquals(got, reference(header), JSON.stringify(header));
    if (got !== "") accepted++;
  }
  assert(accepted > 1000 && accepted < 19_000, `both outcomes are exercised (${accepted} accepted)`);
});

Deno.test("metrics render in the Prometheus text format with escaped labels", () => {
  const registry = createRegistry();
  const counter = registry.counter("things_total", "Things.", ["kind"]);
  counter.inc({ kind: 'a"b\\c' }, 2);
  const histogram = registry.histogram("latency_seconds", "Latency.", [0.1, 1], ["m"]);
  histogram.observe(0.05, { m: "x" });
  histogram.observe(0.5, { m: "x" });
  histogram.observe(5, { m: "x" });
  const text = registry.render();
  assert(text.includes('things_total{kind="a\\"b\\\\c"} 2'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="0.1"} 1'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="1"} 2'), text);
  assert(text.includes('latency_seconds_bucket{m="x",le="+Inf"} 3'), text);
  assert(text.includes('latency_seconds_count{m="x"} 3'), text);
});

Deno.test("bounded state forgets the oldest entries past its capacity", () => {
  const map = new BoundedMap<string, number>(3);
  for (const [i, key] of ["a", "b", "c", "d"].entries()) map.set(key, i);
  assertEquals(map.size, 3);
  assertEquals(map.has("a"), false);
  assertEquals([...map.newestFirst()].map(([k]) => k), ["d", "c", "b"]);
});
