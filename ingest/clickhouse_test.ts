/**
 * The client (clickhouse.ts) against a recording stand-in for ClickHouse's HTTP interface (no servers,
 * seconds): what each method sends (no setting, ever: a readonly=1 user refuses any; the hand-written
 * RowBinary INSERT as before), errors with the server's code in 18.16's and current releases' forms, failures
 * in the middle of an answer, and deadlines before and during the answer. The same against the real 18.16
 * server: ingest_test.ts ("the readonly user ...", "the client: ...").
 */
import { assert, assertEquals, AssertionError } from "@tailwatch/testing";
import { ClickHouseError, createClickHouse, exceptionDetails, parseJsonEachRow } from "./clickhouse.ts";
import { sql } from "./sql.ts";

interface Seen {
  method: string;
  path: string;
  params: Record<string, string>;
  headers: Record<string, string>;
  body: Uint8Array;
}

/** A stand-in for ClickHouse: records every request and answers with `answer` (200 "" by default). */
function fakeClickHouse(answer: (seen: Seen) => Response | Promise<Response> = () => new Response("")) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const url = new URL(request.url);
    const entry: Seen = {
      method: request.method,
      path: url.pathname,
      params: Object.fromEntries(url.searchParams),
      headers: Object.fromEntries(request.headers),
      body: new Uint8Array(await request.arrayBuffer()),
    };
    seen.push(entry);
    return await answer(entry);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    seen,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const credentials = { username: "tailwatch_admin", password: "p@ss:word" };

Deno.test("clickhouse.ts: what each method sends", async (t) => {
  await using fake = fakeClickHouse((seen) =>
    new Response(text(seen.body).includes("FORMAT JSONEachRow") ? '{"n":"1"}\n' : "")
  );
  await using clickhouse = createClickHouse({ url: `${fake.url}//`, ...credentials });
  const basic = `Basic ${btoa(`${credentials.username}:${credentials.password}`)}`;
  /** Nothing but query_id (and the INSERT's query): no database, session, compression or other setting. */
  const assertNoSetting = (entry: Seen, allowed: string[]) => {
    assertEquals(
      Object.keys(entry.params).sort(),
      allowed,
      `URL parameters of ${entry.method} ${entry.path}`,
    );
    for (const header of ["accept-encoding", "content-encoding"]) {
      assertEquals(entry.headers[header], undefined, `no ${header}`);
    }
    assertEquals(entry.headers.authorization, basic);
  };

  await t.step("exec: the statement as the body, nothing else", async () => {
    fake.seen.length = 0;
    await clickhouse.exec(sql`ALTER TABLE t DROP PARTITION ${20260101}`);
    assertEquals(fake.seen.length, 1);
    assertEquals([fake.seen[0].method, fake.seen[0].path], ["POST", "/"]);
    assertNoSetting(fake.seen[0], ["query_id"]);
    assertEquals(text(fake.seen[0].body), "ALTER TABLE t DROP PARTITION 20260101");
  });

  await t.step("query: the statement with FORMAT JSONEachRow, values bound in its text", async () => {
    fake.seen.length = 0;
    assertEquals(await clickhouse.query(sql`SELECT count() AS n FROM t WHERE s = ${"it's"}`), [{ n: "1" }]);
    assertNoSetting(fake.seen[0], ["query_id"]);
    assertEquals(
      text(fake.seen[0].body),
      "SELECT count() AS n FROM t WHERE s = 'it\\'s' \nFORMAT JSONEachRow",
    );
  });

  await t.step("insertJsonEachRow: the INSERT in the URL, one JSON object per line", async () => {
    fake.seen.length = 0;
    await clickhouse.insertJsonEachRow({ database: "db", table: "t" }, ["a", "b`c"], [{ a: 1, "b`c": "x" }, {
      a: 2,
      "b`c": "y\n",
    }]);
    await clickhouse.insertJsonEachRow({ database: "db", table: "t" }, ["a"], []);
    assertEquals(fake.seen.length, 1, "no request for no rows");
    assertNoSetting(fake.seen[0], ["query", "query_id"]);
    assertEquals(fake.seen[0].params.query, "INSERT INTO `db`.`t` (`a`, `b\\`c`) FORMAT JSONEachRow");
    assertEquals(text(fake.seen[0].body), '{"a":1,"b`c":"x"}\n{"a":2,"b`c":"y\\n"}\n');
  });

  await t.step("insertBody: the hand-written POST, body as is, named by its query_id", async () => {
    fake.seen.length = 0;
    const body = new Uint8Array([0, 1, 2, 255, 10, 13]);
    await clickhouse.insertBody({ database: "db", table: "t" }, ["a", "b"], "RowBinary", body, {
      queryId: "tailwatch-ingest-x-1",
    });
    await clickhouse.insertBody({ database: "db", table: "t" }, ["a"], "RowBinary", new Uint8Array());
    assertEquals(fake.seen.length, 1, "no request for an empty body");
    const [entry] = fake.seen;
    assertEquals(entry.params, {
      query: "INSERT INTO `db`.`t` (`a`, `b`) FORMAT RowBinary",
      query_id: "tailwatch-ingest-x-1",
    });
    assertEquals(entry.headers["x-clickhouse-user"], credentials.username);
    assertEquals(entry.headers["x-clickhouse-key"], credentials.password);
    assertEquals(entry.body, body);
  });

  await t.step("ping: GET /ping", async () => {
    fake.seen.length = 0;
    assert(await clickhouse.ping());
    assertEquals([fake.seen[0].method, fake.seen[0].path, fake.seen[0].params], ["GET", "/ping", {}]);
  });
});

Deno.test("clickhouse.ts: errors carry the server's code, on every path", async (t) => {
  const v18 =
    "Code: 60, e.displayText() = DB::Exception: Table db.t doesn't exist., e.what() = DB::Exception\n";
  const current =
    "Code: 60. DB::Exception: Table db.t does not exist. (UNKNOWN_TABLE) (version 24.8.4.13 (official build))\n";
  let body = v18;
  let status = 404;
  await using fake = fakeClickHouse(() => new Response(body, { status }));
  await using clickhouse = createClickHouse({ url: fake.url, ...credentials });
  const calls: [string, () => Promise<unknown>][] = [
    ["exec", () => clickhouse.exec(sql`DROP TABLE db.t`)],
    ["query", () => clickhouse.query(sql`SELECT 1 FROM db.t`)],
    [
      "insertJsonEachRow",
      () => clickhouse.insertJsonEachRow({ database: "db", table: "t" }, ["a"], [{ a: 1 }]),
    ],
    ["insertBody", () => clickhouse.insertBody({ database: "db", table: "t" }, ["a"], "RowBinary", "x")],
  ];
  for (const [release, text, type] of [["18.16", v18, undefined], ["current", current, "UNKNOWN_TABLE"]]) {
    await t.step(`${release} form`, async () => {
      body = text!;
      for (const [name, call] of calls) {
        const error = await rejection(call, undefined, name);
        assertEquals([error.code, error.type, error.answered], [60, type, true], `${name}: ${error.message}`);
        assert(
          /does(n't| not) exist/.test(error.message),
          `${name} keeps the server's text: ${error.message}`,
        );
        assertEquals(error.status, name === "insertBody" ? 404 : undefined, `${name}: status`);
      }
    });
  }
  await t.step("an answer that is no exception: answered (insertBody), no code", async () => {
    body = "<html>bad gateway</html>";
    status = 502;
    const error = await rejection(() => calls[3][1]());
    assertEquals([error.code, error.status, error.answered], [undefined, 502, true]);
  });
  await t.step("no server: no code, not answered, on every path; ping is false", async () => {
    const gone = createClickHouse({ url: "http://127.0.0.1:1", ...credentials });
    for (
      const [name, call] of [
        ["exec", () => gone.exec(sql`SELECT 1`)],
        ["query", () => gone.query(sql`SELECT 1`)],
        ["insertJsonEachRow", () => gone.insertJsonEachRow({ database: "d", table: "t" }, ["a"], [{ a: 1 }])],
        ["insertBody", () => gone.insertBody({ database: "d", table: "t" }, ["a"], "RowBinary", "x")],
      ] as const
    ) {
      const error = await rejection(call, "unreachable", name);
      assertEquals([error.code, error.status, error.answered], [undefined, undefined, false], name);
    }
    assertEquals(await gone.ping(), false);
    await gone.close();
  });
});

Deno.test("clickhouse.ts: a failure in the middle of an answer is an error, never rows lost", async (t) => {
  await t.step("18.16: a `Code:` line after rows", () => {
    const error = assertThrowsClickHouse(() =>
      parseJsonEachRow(
        '{"t":0}\n{"t":0}\nCode: 395, e.displayText() = DB::Exception: Value passed to ' +
          "'throwIf' function is non zero, e.what() = DB::Exception\n",
      )
    );
    assertEquals([error.code, error.answered], [395, true]);
  });
  await t.step("25.11 and later: the __exception__ block", () => {
    const tag = "ykxrpxbsyzwqzbdd";
    const message = "Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero. " +
      "(FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) (version 25.11.1.1)\n";
    const error = assertThrowsClickHouse(() =>
      parseJsonEachRow(
        `{"t":0}\n\r\n__exception__\r\n${tag}\r\n${message}${message.length} ${tag}\r\n__exception__\r\n`,
      )
    );
    assertEquals([error.code, error.type], [395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"]);
  });
  await t.step("a cut answer: its last line is not JSON", () => {
    assertThrowsClickHouse(() => parseJsonEachRow('{"t":0}\n{"t":'));
    assertEquals(
      parseJsonEachRow('{"t":0}\n{"t":1}'),
      [{ t: 0 }, { t: 1 }],
      "a last line without LF is a row",
    );
    assertEquals(parseJsonEachRow(""), []);
  });
  await t.step("through query(), on a 200 answer", async () => {
    await using fake = fakeClickHouse(() =>
      new Response('{"t":0}\nCode: 241, e.displayText() = DB::Exception: Memory limit\n')
    );
    await using clickhouse = createClickHouse({ url: fake.url, ...credentials });
    const error = await rejection(() => clickhouse.query(sql`SELECT 1`), "mid-answer");
    assertEquals(error.code, 241);
  });
  await t.step("exceptionDetails reads both forms, and nothing from other text", () => {
    assertEquals(exceptionDetails("Code: 164, e.displayText() = DB::Exception: Cannot modify"), {
      code: 164,
    });
    assertEquals(
      exceptionDetails("Code: 57. DB::Exception: Table x already exists. (TABLE_ALREADY_EXISTS)"),
      {
        code: 57,
        type: "TABLE_ALREADY_EXISTS",
      },
    );
    assertEquals(exceptionDetails("connection refused (ECONNREFUSED)"), {});
  });
});

/** The ClickHouseError `fn` rejects with (whose message includes `includes`). */
async function rejection(
  fn: () => Promise<unknown>,
  includes?: string,
  what = "call",
): Promise<ClickHouseError> {
  try {
    await fn();
  } catch (error) {
    if (!(error instanceof ClickHouseError)) {
      throw new AssertionError(`${what}: a ClickHouseError, got ${error}`);
    }
    if (includes !== undefined && !error.message.includes(includes)) {
      throw new AssertionError(`${what}: ${JSON.stringify(includes)} not in ${error.message}`);
    }
    return error;
  }
  throw new AssertionError(`${what}: it resolved`);
}

function assertThrowsClickHouse(fn: () => unknown): ClickHouseError {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof ClickHouseError)) throw new AssertionError(`a ClickHouseError, got ${error}`);
    return error;
  }
  throw new AssertionError("did not throw");
}

Deno.test("clickhouse.ts: deadlines hold before the answer and while it is read", async (t) => {
  const release = Promise.withResolvers<void>();
  await using fake = fakeClickHouse((seen) => {
    const statement = text(seen.body);
    if (statement.startsWith("SELECT stall")) {
      // Headers and a first row at once, then nothing until the test ends.
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"n":1}\n'));
          release.promise.then(() => {
            try {
              controller.close();
            } catch {
              // the client gave up on it: cancelled already
            }
          });
        },
      });
      return new Response(stream);
    }
    return release.promise.then(() => new Response(""));
  });
  await using clickhouse = createClickHouse({ url: fake.url, ...credentials, timeoutMs: 300 });
  try {
    for (
      const [name, call] of [
        ["exec, no answer", () => clickhouse.exec(sql`SELECT 1`)],
        ["query, no answer", () => clickhouse.query(sql`SELECT 1`)],
        ["query, an answer that stalls", () => clickhouse.query(sql`SELECT stall`)],
        [
          "insertJsonEachRow",
          () => clickhouse.insertJsonEachRow({ database: "d", table: "t" }, ["a"], [{ a: 1 }]),
        ],
        ["insertBody", () => clickhouse.insertBody({ database: "d", table: "t" }, ["a"], "RowBinary", "x")],
      ] as const
    ) {
      await t.step(name, async () => {
        const started = performance.now();
        const error = await rejection(call);
        const took = performance.now() - started;
        assert(took >= 250 && took < 3_000, `gave up after ${took} ms`);
        assertEquals([error.code, error.answered], [undefined, false], error.message);
      });
    }
    await t.step("a call's own deadline", async () => {
      const started = performance.now();
      await rejection(() => clickhouse.query(sql`SELECT 1`, { timeoutMs: 1_000 }));
      assert(performance.now() - started >= 950, "waited for its own deadline");
    });
  } finally {
    release.resolve();
  }
});
