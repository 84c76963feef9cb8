/** HPACK (RFC 7541) against the RFC's examples, as a round trip, and on malformed input; Huffman coding. */
import { assert, assertEquals, seededRandom } from "@tailwatch/testing";
import { createHpackDecoder, createHpackEncoder, HpackError, huffmanDecode, huffmanEncode } from "./mod.ts";

const hex = (text: string) =>
  Uint8Array.from(text.replace(/\s/g, "").match(/../g)!.map((h) => parseInt(h, 16)));
const pairs = (fields: string[]) =>
  fields.flatMap((_, i) => i % 2 === 0 ? [`${fields[i]}: ${fields[i + 1]}`] : []);

Deno.test("HPACK decodes the RFC 7541 examples: literals, Huffman, the dynamic table and its evictions", () => {
  const decodeAll = (blocks: string[], tableSize = 4096) => {
    const decoder = createHpackDecoder(tableSize);
    return blocks.map((block) => {
      const fields: string[] = [];
      decoder.decode(hex(block), fields);
      return pairs(fields);
    });
  };
  const requests = [
    [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com"],
    [":method: GET", ":scheme: http", ":path: /", ":authority: www.example.com", "cache-control: no-cache"],
    [
      ":method: GET",
      ":scheme: https",
      ":path: /index.html",
      ":authority: www.example.com",
      "custom-key: custom-value",
    ],
  ];
  // C.3: requests without Huffman coding.
  assertEquals(
    decodeAll([
      "828684410f7777772e6578616d706c652e636f6d",
      "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
    ]),
    requests,
  );
  // C.4: the same requests, Huffman-coded.
  assertEquals(
    decodeAll([
      "828684418cf1e3c2e5f23a6ba0ab90f4ff",
      "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
    ]),
    requests,
  );
  // C.6: responses with Huffman coding in a 256-octet table, so that entries are evicted.
  assertEquals(
    decodeAll([
      "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
      "4883640effc1c0bf",
      "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ], 256),
    [
      [
        ":status: 302",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:21 GMT",
        "location: https://www.example.com",
      ],
      [
        ":status: 307",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:21 GMT",
        "location: https://www.example.com",
      ],
      [
        ":status: 200",
        "cache-control: private",
        "date: Mon, 21 Oct 2013 20:13:22 GMT",
        "location: https://www.example.com",
        "content-encoding: gzip",
        "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
      ],
    ],
  );
});

Deno.test("HPACK refuses malformed blocks instead of guessing", () => {
  const refuses = (block: Uint8Array, why: RegExp) => {
    let error: unknown;
    try {
      createHpackDecoder().decode(block, []);
    } catch (caught) {
      error = caught;
    }
    assert(error instanceof HpackError && why.test(error.message), `${block}: ${error}`);
  };
  refuses(hex("be"), /out of range/); // dynamic index with an empty table
  refuses(hex("80"), /out of range/); // index 0
  refuses(hex("3fe21f"), /table size/); // size update above 4096
  refuses(hex("8220"), /after a header field/);
  refuses(hex("0f"), /truncated/);
  refuses(hex("4185f1e3c2e5"), /longer than its block/);
  refuses(hex("4081ff0161"), /padding|EOS/); // a name of 8 one-bits: padding longer than 7 bits
  refuses(hex("4084ffffffff0161"), /EOS/); // EOS inside a string
});

Deno.test("Huffman coding round-trips any Latin-1 string", () => {
  const random = seededRandom(7);
  for (let i = 0; i < 3000; i++) {
    let text = "";
    const length = Math.floor(random() * 60);
    for (let j = 0; j < length; j++) text += String.fromCharCode(Math.floor(random() * 256));
    const coded = huffmanEncode(text);
    assertEquals(huffmanDecode(coded, 0, coded.length), text);
  }
  assertEquals(Array.from(huffmanEncode("www.example.com")), Array.from(hex("f1e3c2e5f23a6ba0ab90f4ff")));
});

Deno.test("the encoder's blocks decode to their fields across table growth, eviction and size changes", () => {
  const random = seededRandom(11);
  const encoder = createHpackEncoder();
  const decoder = createHpackDecoder(4096);
  const names = [":path", "content-type", "x-custom", "grpc-timeout", "traceparent", "authorization", "te"];
  for (let block = 0; block < 2000; block++) {
    if (random() < 0.01) encoder.setMaxTableSize([0, 100, 256, 4096, 65536][Math.floor(random() * 5)]);
    const fields: string[] = [];
    const count = 1 + Math.floor(random() * 8);
    for (let i = 0; i < count; i++) {
      const name = names[Math.floor(random() * names.length)];
      const value = "v".repeat(Math.floor(random() * 300)) + String(Math.floor(random() * 20));
      fields.push(name, value);
    }
    const decoded: string[] = [];
    decoder.decode(encoder.encode(fields).slice(), decoded);
    assertEquals(decoded, fields, `block ${block}`);
  }
  // A field sent twice costs a byte the second time.
  const fresh = createHpackEncoder();
  const first = fresh.encode([":path", "/catalog.v1.CatalogService/GetProduct"]).length;
  assertEquals(fresh.encode([":path", "/catalog.v1.CatalogService/GetProduct"]).length, 1, `first ${first}`);
});

/** The h2spec binary: on PATH or where `go install` put it (./dev test installs it). */
