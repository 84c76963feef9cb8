import { assert, assertEquals } from "@tailwatch/testing";
import { bucketQuantileBound, parseMetrics, requestDeltas, serviceMetrics } from "./metrics_text.ts";

const before = `# HELP requests_total x
requests_total{method="/a.v1.AService/Get",protocol="grpc",code="OK"} 10
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="0.001"} 10
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="0.01"} 10
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="+Inf"} 10
events_published_total 10
requests_in_flight 0
`;
const after = `requests_total{method="/a.v1.AService/Get",protocol="grpc",code="OK"} 110
requests_total{method="/a.v1.AService/Get",protocol="grpc",code="NOT_FOUND"} 5
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="0.001"} 60
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="0.01"} 114
request_duration_seconds_bucket{method="/a.v1.AService/Get",protocol="grpc",le="+Inf"} 115
events_published_total 113
events_dropped_total 2
events_buffer_depth 0
requests_in_flight 3
`;

Deno.test("the services' /metrics read as counters per method, protocol and code", () => {
  assertEquals(parseMetrics('x{a="q\\"uote",b="n"} 1.5')[0], {
    name: "x",
    labels: { a: 'q"uote', b: "n" },
    value: 1.5,
  });
  const a = serviceMetrics(before);
  const b = serviceMetrics(after);
  assertEquals(requestDeltas(a, b), {
    "/a.v1.AService/Get|grpc|OK": 100,
    "/a.v1.AService/Get|grpc|NOT_FOUND": 5,
  });
  assertEquals([b.eventsPublished, b.eventsDropped, b.inFlight], [113, 2, 3]);
  // 105 requests between the scrapes: 50 under 1 ms, 104 under 10 ms.
  assertEquals(bucketQuantileBound(a, b, ["/a.v1.AService/Get|grpc"], 0.4), 0.001);
  assertEquals(bucketQuantileBound(a, b, ["/a.v1.AService/Get|grpc"], 0.99), 0.01);
  assertEquals(bucketQuantileBound(a, b, ["/a.v1.AService/Get|grpc"], 1), Infinity);
  assert(Number.isNaN(bucketQuantileBound(a, a, ["/a.v1.AService/Get|grpc"], 0.5)));
});
