/**
 * The ClickHouse side of the deployment, on chDB (the current engine compose and k8s run; 18.16 has neither the
 * Prometheus format nor replicated DDL):
 * - the prod overlay's replicated schema (deploy/k8s/overlays/prod/clickhouse/replicated-schema.sql), with the
 *   replication taken out, ends at exactly the schema the migrations make: every column (name, type, default,
 *   position), engine family, partition and sorting key, view query and Buffer target; applied twice it changes
 *   nothing, and `applyMigrations` afterwards applies nothing (what the setup Job does in prod);
 * - the predefined query behind GET /tailwatch/metrics (deploy/clickhouse/config.d/tailwatch.xml) answers the
 *   freshness gauges in Prometheus' text format (`promtool check metrics` accepts it) with the newest rows' times;
 * - the read-only profile of the deployed users file has the limits of the tested one (testing/clickhouse_server.ts).
 */
import { applyMigrations, splitStatements } from "@tailwatch/ingest/migrations";
import { assert, assertEquals, clickhouseUsersXml } from "@tailwatch/testing";
import { asIngestClickHouse, ROOT, startChdbEngine } from "./test_helpers.ts";

const DEPLOY = `${ROOT}deploy`;

/** The replicated schema as a single server runs it: no ON CLUSTER, Replicated*MergeTree(path, replica, args) -> *MergeTree(args). */
export function withoutReplication(sql: string): string {
  return sql.replaceAll(" ON CLUSTER tailwatch", "").replace(
    /Replicated(\w*)MergeTree\('[^']*', '[^']*'(?:, ([^)]*))?\)/g,
    (_, kind: string, args: string | undefined) => `${kind}MergeTree${args ? `(${args})` : ""}`,
  );
}

Deno.test("ClickHouse in compose and k8s: the replicated schema equals the migrations; the freshness endpoint; the reader's limits", async (t) => {
  await using chdb = await startChdbEngine();
  const clickhouse = asIngestClickHouse(chdb);

  await t.step(
    "replicated-schema.sql (replication taken out) ends at the migrations' schema; setup's migrate is then a no-op",
    async () => {
      const text = await Deno.readTextFile(`${DEPLOY}/k8s/overlays/prod/clickhouse/replicated-schema.sql`);
      assert(
        /ON CLUSTER tailwatch/.test(text) && /ReplicatedSummingMergeTree/.test(text),
        "the prod file is replicated",
      );
      const local = withoutReplication(text);
      const statements = splitStatements(local);
      assert(
        !/Replicated|ON CLUSTER/.test(statements.join("\n")),
        "every replicated engine and ON CLUSTER taken out",
      );
      for (let run = 0; run < 2; run++) {
        for (const statement of splitStatements(local)) {
          await chdb.run(statement.replaceAll("{{database}}", "replicated"));
        }
      }
      assertEquals(
        await applyMigrations({ clickhouse, database: "replicated" }),
        [],
        "migrate finds every version applied",
      );
      await applyMigrations({ clickhouse, database: "migrated" });

      const versions = async (db: string) =>
        (await chdb.select(`SELECT version, name FROM ${db}.schema_migrations ORDER BY version`)).rows;
      assertEquals(
        await versions("replicated"),
        await versions("migrated"),
        "the same versions recorded, once each",
      );

      const columns = async (db: string) =>
        (await chdb.select(
          `SELECT table, name, type, default_kind, default_expression, position FROM system.columns
        WHERE database = '${db}' ORDER BY table, position`,
        )).rows;
      assertEquals(await columns("replicated"), await columns("migrated"), "every column");

      const tables = async (db: string) =>
        (await chdb.select(
          `SELECT name, engine, partition_key, sorting_key, primary_key,
          replaceAll(as_select, '${db}.', 'DB.') AS query,
          replaceAll(engine_full, '${db}', 'DB') AS engine_full
        FROM system.tables WHERE database = '${db}' AND name != 'schema_migrations' ORDER BY name`,
        )).rows;
      const replicated = await tables("replicated");
      assertEquals(
        replicated,
        await tables("migrated"),
        "every table's engine (with its keys and settings) and view",
      );
      assertEquals(
        replicated.length,
        9,
        "request_events, 2 rollups, 2 views, percentiles storage and Buffer, stream_epochs, projection_rebuilds",
      );
    },
  );

  await t.step(
    "GET /tailwatch/metrics: the freshness gauges, in Prometheus format, from the newest rows",
    async () => {
      const xml = await Deno.readTextFile(`${DEPLOY}/clickhouse/config.d/tailwatch.xml`);
      const query = /<query>([^<]*)<\/query>/.exec(xml)![1].replaceAll("&gt;", ">").replaceAll("&amp;", "&");
      assert(/FORMAT Prometheus\s*$/.test(query), "answers in Prometheus format");
      await applyMigrations({ clickhouse, database: "profiler" });
      const empty = await chdb.run(query);
      assert(/^tailwatch_percentiles_last_ts_seconds 0$/m.test(empty), `no rows: 0\n${empty}`);
      const [{ now }] = (await chdb.select("SELECT toUnixTimestamp(now()) AS now")).rows.map(([now]) => ({
        now: Number(now),
      }));
      await chdb.run(
        `INSERT INTO profiler.latency_percentiles (ts, window_s, service, method, count, version)
      VALUES (toDateTime(${now - 7}), 10, 'catalog', '', 5, 1), (toDateTime(${
          now - 20
        }), 60, 'orders', '', 5, 1),
        (toDateTime(${now - 7200}), 60, 'orders', '', 5, 1)`,
      );
      await chdb.run(
        `INSERT INTO profiler.request_events (event_id, ts, ts_ms, service, method, duration_us)
      VALUES (generateUUIDv4(), toDateTime(${now - 3}), ${(now - 3) * 1000}, 'catalog', 'm', 100)`,
      );
      const body = await chdb.run(query);
      const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(body)?.[1]);
      assertEquals(value("tailwatch_percentiles_last_ts_seconds"), now - 7, body);
      assertEquals(value("tailwatch_rollup_last_ts_seconds"), now - 3, body);
      assert(/^# TYPE tailwatch_percentiles_last_ts_seconds gauge$/m.test(body), body);
      const check = new Deno.Command("promtool", {
        args: ["check", "metrics"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      })
        .spawn();
      const writer = check.stdin.getWriter();
      await writer.write(new TextEncoder().encode(body));
      await writer.close();
      const result = await check.output();
      assert(
        result.success,
        `promtool check metrics: ${new TextDecoder().decode(result.stderr)}${
          new TextDecoder().decode(result.stdout)
        }`,
      );
    },
  );

  await t.step("the deployed reader's limits are the tested ones", async () => {
    const deployed = await Deno.readTextFile(`${DEPLOY}/clickhouse/users.d/tailwatch.xml`);
    const tested = clickhouseUsersXml("a", "b");
    // A profile's block: from its opening tag to the closing tag that stands on a line of its own.
    const profile = (xml: string, name: string) =>
      new RegExp(`<${name}>\\n([\\s\\S]*?)\\n\\s*</${name}>`).exec(xml.replace(/<!--[\s\S]*?-->/g, ""))![1];
    const settings = (block: string) =>
      Object.fromEntries(
        [...block.replace(/<constraints>[\s\S]*<\/constraints>/, "").matchAll(/<(\w+)>([^<]*)<\/\1>/g)]
          .map((m) => [m[1], m[2]]),
      );
    assertEquals(settings(profile(deployed, "tailwatch_readonly")), settings(profile(tested, "readonly")));
    assert(
      /<password from_env="CLICKHOUSE_READONLY_PASSWORD"/.test(deployed),
      "passwords from the environment",
    );
    assert(/<password from_env="CLICKHOUSE_ADMIN_PASSWORD"/.test(deployed));
    assert(!/<password>[^<]+<\/password>/.test(deployed), "no password in the file");
  });
});
