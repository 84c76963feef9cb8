/**
 * deploy/nats/nats.conf and auth.conf on a real nats-server (the pinned release, started by @tailwatch/testing
 * with that file), and deploy/setup.ts's stream step:
 * - setup creates REQUEST_EVENTS as configured, a second run changes nothing, a changed setting updates it;
 * - a service publishes its own events (acked by JetStream) and nothing else: not another service's subject, not
 *   the stream's configuration, and it cannot read events;
 * - ingest consumes (durable pull consumer, fetch, ack) and dead-letters, but cannot publish events or change
 *   the stream;
 * - a connection without a user (the web app, the profiler) is refused;
 * - each user receives replies on its own inboxes (`_INBOX_<user>`, the clients' default prefix) and may not
 *   subscribe to another's, nor to the shared `_INBOX.>`.
 * The stream's per-subject counts prove what was stored, whatever the client reports.
 */
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { natsConfig, natsJsOptions } from "@tailwatch/nats";
import {
  assert,
  assertEquals,
  assertRejects,
  CLICKHOUSE_ADMIN,
  startClickHouseServer,
  startNatsServer,
} from "@tailwatch/testing";
import { applyStream, loadSetupSettings, streamConfig } from "./setup.ts";
import { ROOT } from "./test_helpers.ts";

/** Rejected the way the server refuses: a permissions or authorization violation (or no answer at all). */
const refused = (fn: () => Promise<unknown>) =>
  assertRejects(
    fn,
    (error) => /permission|authoriz|timeout|violation/i.test(String(error)),
    "expected a refusal",
  );

const PASSWORDS = {
  NATS_SERVER_NAME: "tailwatch-test",
  NATS_SETUP_PASSWORD: "setup-pw",
  NATS_CATALOG_PASSWORD: "catalog-pw",
  NATS_ORDERS_PASSWORD: "orders-pw",
  NATS_PAYMENTS_PASSWORD: "payments-pw",
  NATS_INGEST_PASSWORD: "ingest-pw",
};

Deno.test("NATS users and permissions (deploy/nats) and the setup step's stream", async (t) => {
  // The shipped files, but for the store directory (the server will not take it from the command line too).
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-nats-conf-" });
  const shipped = await Deno.readTextFile(`${ROOT}deploy/nats/nats.conf`);
  assert(shipped.includes("store_dir: /data/jetstream"), "nats.conf keeps its store in /data/jetstream");
  await Deno.writeTextFile(
    `${dir}/nats.conf`,
    shipped.replace("store_dir: /data/jetstream", `store_dir: "${dir}/jetstream"`),
  );
  await Deno.copyFile(`${ROOT}deploy/nats/auth.conf`, `${dir}/auth.conf`);
  await using nats = await startNatsServer({ dir, configFile: `${dir}/nats.conf`, env: PASSWORDS });
  const urlAs = (user: string, password: string) =>
    nats.url.replace("nats://", `nats://${user}:${password}@`);
  const connections: NatsConnection[] = [];
  const as = async (user: string) => {
    const password = PASSWORDS[`NATS_${user.toUpperCase()}_PASSWORD` as keyof typeof PASSWORDS];
    // As every process connects: the kit's options (credentials, the user's own inbox prefix).
    const nc = await connect({ ...natsJsOptions(natsConfig(urlAs(user, password))), timeout: 3000 });
    connections.push(nc);
    return nc;
  };
  const settings = loadSetupSettings({
    NATS_URL: urlAs("setup", PASSWORDS.NATS_SETUP_PASSWORD),
    CLICKHOUSE_URL: "http://127.0.0.1:1",
    CLICKHOUSE_PASSWORD: "unused",
  }).stream;

  try {
    const admin = await as("setup");
    const jsm = await jetstreamManager(admin);
    const countsBySubject = async () =>
      (await jsm.streams.info("REQUEST_EVENTS", { subjects_filter: ">" })).state.subjects ?? {};

    await t.step(
      "setup creates the stream as configured; a second run changes nothing; a new setting updates it",
      async () => {
        assertEquals(await applyStream(urlAs("setup", PASSWORDS.NATS_SETUP_PASSWORD), settings), "created");
        const config = (await jsm.streams.info("REQUEST_EVENTS")).config;
        const wanted = streamConfig(settings);
        for (
          const key of [
            "subjects",
            "storage",
            "retention",
            "discard",
            "max_age",
            "max_bytes",
            "duplicate_window",
            "num_replicas",
          ] as const
        ) {
          assertEquals(config[key], wanted[key], key);
        }
        assertEquals(await applyStream(urlAs("setup", PASSWORDS.NATS_SETUP_PASSWORD), settings), "unchanged");
        const longer = { ...settings, maxAgeS: settings.maxAgeS * 2 };
        assertEquals(await applyStream(urlAs("setup", PASSWORDS.NATS_SETUP_PASSWORD), longer), "updated");
        assertEquals((await jsm.streams.info("REQUEST_EVENTS")).config.max_age, longer.maxAgeS * 1e9);
        assertEquals(await applyStream(urlAs("setup", PASSWORDS.NATS_SETUP_PASSWORD), settings), "updated");
      },
    );

    await t.step("a service publishes its own events, and nothing else", async () => {
      const catalog = await as("catalog");
      const js = jetstream(catalog);
      const ack = await js.publish("events.requests.catalog", new Uint8Array([1, 2, 3]), { msgID: "e-1" });
      assertEquals(ack.stream, "REQUEST_EVENTS");
      // Another service's subject: refused by the server (nothing stored, whatever the client says).
      await refused(() =>
        js.publish("events.requests.orders", new Uint8Array([9]), { msgID: "forged", timeout: 2000 })
      );
      // Its own partitioned subjects (EVENT_PARTITIONS > 1): stored; another service's partition: refused.
      const partitioned = await js.publish("events.requests.catalog.2", new Uint8Array([6]), {
        msgID: "e-p",
      });
      assertEquals(partitioned.stream, "REQUEST_EVENTS");
      await refused(() =>
        js.publish("events.requests.orders.2", new Uint8Array([9]), { msgID: "forged-p", timeout: 2000 })
      );
      // The stream's info: allowed (a service checks the stream exists); changing or deleting it: refused.
      const serviceJsm = await jetstreamManager(catalog);
      assertEquals((await serviceJsm.streams.info("REQUEST_EVENTS")).config.name, "REQUEST_EVENTS");
      const current = (await serviceJsm.streams.info("REQUEST_EVENTS")).config;
      await refused(() =>
        serviceJsm.streams.update("REQUEST_EVENTS", { ...current, num_replicas: 1, max_age: 1e9 })
      );
      await refused(() => serviceJsm.streams.delete("REQUEST_EVENTS"));
      // Reading events: refused (a subscription the server does not allow gets nothing).
      const orders = await as("orders");
      const spy = catalog.subscribe("events.requests.>");
      const seen: string[] = [];
      (async () => {
        for await (const m of spy) seen.push(m.subject);
      })().catch(() => {});
      await catalog.flush().catch(() => {});
      await jetstream(orders).publish("events.requests.orders", new Uint8Array([4]), { msgID: "e-2" });
      await new Promise((resolve) => setTimeout(resolve, 300));
      assertEquals(seen, [], "catalog cannot read events");
      assertEquals(await countsBySubject(), {
        "events.requests.catalog": 1,
        "events.requests.catalog.2": 1,
        "events.requests.orders": 1,
      });
      assertEquals((await jsm.streams.info("REQUEST_EVENTS")).config.max_age, streamConfig(settings).max_age);
    });

    await t.step(
      "ingest consumes, acks and dead-letters, and cannot publish events or change the stream",
      async () => {
        const ingest = await as("ingest");
        const ingestJsm = await jetstreamManager(ingest);
        await ingestJsm.consumers.add("REQUEST_EVENTS", {
          durable_name: "tailwatch-ingest",
          ack_policy: AckPolicy.All,
          max_ack_pending: 100,
        });
        const consumer = await jetstream(ingest).consumers.get("REQUEST_EVENTS", "tailwatch-ingest");
        const messages = await consumer.fetch({ max_messages: 10, expires: 2000 });
        const subjects: string[] = [];
        for await (const m of messages) {
          subjects.push(m.subject);
          if (subjects.length === 3) {
            m.ack();
            break;
          }
        }
        assertEquals(subjects.sort(), [
          "events.requests.catalog",
          "events.requests.catalog.2",
          "events.requests.orders",
        ]);
        await ingest.flush();
        const info = await ingestJsm.consumers.info("REQUEST_EVENTS", "tailwatch-ingest");
        assertEquals(info.ack_floor.stream_seq, 3, "the cumulative ack reached the server");
        // What the global floor of several partitions reads (ingest/floor.ts): the consumers, and the first
        // message of a partition's subjects above a sequence.
        const names: string[] = [];
        for await (const consumer of ingestJsm.consumers.list("REQUEST_EVENTS")) names.push(consumer.name);
        assertEquals(names, ["tailwatch-ingest"]);
        const next = await ingestJsm.streams.getMessage(
          "REQUEST_EVENTS",
          { seq: 1, next_by_subj: "events.requests.*.2" } as unknown as { seq: number },
        );
        assertEquals(next?.subject, "events.requests.catalog.2");
        // Dead letters: allowed (outside the stream, so they are not stored in it).
        ingest.publish("events.deadletter.undecodable", new Uint8Array([7]));
        await ingest.flush();
        // Events: refused.
        await refused(() =>
          jetstream(ingest).publish("events.requests.catalog", new Uint8Array([5]), {
            msgID: "x",
            timeout: 2000,
          })
        );
        const current = (await ingestJsm.streams.info("REQUEST_EVENTS")).config;
        await refused(() => ingestJsm.streams.update("REQUEST_EVENTS", { ...current, max_age: 1e9 }));
        await ingestJsm.consumers.delete("REQUEST_EVENTS", "tailwatch-ingest");
        assertEquals(await countsBySubject(), {
          "events.requests.catalog": 1,
          "events.requests.catalog.2": 1,
          "events.requests.orders": 1,
        });
      },
    );

    await t.step("each user's replies come to its own inboxes; nobody may listen on another's", async () => {
      const orders = await as("orders");
      // The default prefix is the user's own: a request (the stream's info) is answered there.
      const info = await (await jetstreamManager(orders)).streams.info("REQUEST_EVENTS");
      assertEquals(info.config.name, "REQUEST_EVENTS");
      // Listening on another user's inboxes, or on the shared prefix: refused by the server.
      const errors: string[] = [];
      (async () => {
        for await (const status of orders.status()) {
          if (status.type === "error") errors.push(String(status.error));
        }
      })().catch(() => {});
      for (const subject of ["_INBOX_ingest.>", "_INBOX.>", "_INBOX_catalog.x"]) {
        const sub = orders.subscribe(subject);
        (async () => {
          for await (const _ of sub) { /* nothing may come */ }
        })().catch(() => {});
      }
      await orders.flush();
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const subject of ["_INBOX_ingest.>", "_INBOX.>", "_INBOX_catalog.x"]) {
        assert(
          errors.some((error) => error.includes(`Subscription to "${subject}"`)),
          `subscribing to ${subject} refused: ${errors}`,
        );
      }
      // A client that keeps the shared prefix gets no answers at all (its inbox subscription is refused).
      const shared = await connect({
        ...natsJsOptions(natsConfig(urlAs("orders", PASSWORDS.NATS_ORDERS_PASSWORD))),
        inboxPrefix: "_INBOX",
        timeout: 3000,
      });
      connections.push(shared);
      await refused(() => shared.request("$JS.API.STREAM.INFO.REQUEST_EVENTS", undefined, { timeout: 1500 }));
    });

    await t.step("without a user (web, profiler) or with a wrong password: refused", async () => {
      // Spoken on a raw socket: nats.js leaks an uncaught ECONNRESET when the server closes a refused connection.
      const attempt = async (credentials: string) => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: nats.port });
        try {
          await conn.write(new TextEncoder().encode(`CONNECT {"verbose":false${credentials}}\r\nPING\r\n`));
          let text = "";
          const buffer = new Uint8Array(4096);
          while (!/\r\n(PONG|-ERR[^\r]*)\r\n/.test(text)) {
            const n = await conn.read(buffer);
            if (n === null) break;
            text += new TextDecoder().decode(buffer.subarray(0, n));
          }
          return text;
        } finally {
          conn.close();
        }
      };
      assert(
        (await attempt(`,"user":"setup","pass":"${PASSWORDS.NATS_SETUP_PASSWORD}"`)).includes("PONG"),
        "setup",
      );
      for (const credentials of ["", ',"user":"web","pass":"anything"', ',"user":"catalog","pass":"wrong"']) {
        const answer = await attempt(credentials);
        assert(
          /-ERR 'Authorization Violation'/.test(answer),
          `refused ${credentials || "(no user)"}: ${answer}`,
        );
      }
      const log = await Deno.readTextFile(`${dir}/nats.log`);
      assert(
        /Violation[^\n]*events\.requests\.orders/.test(log),
        `the server logged the refusal:\n${log.slice(-3000)}`,
      );
    });
  } finally {
    for (const nc of connections) await nc.close().catch(() => {});
    await nats.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("the setup step end to end: stream and migrations on a fresh deployment, then again as a no-op", async () => {
  await using clickhouse = await startClickHouseServer();
  const dir = await Deno.makeTempDir({ prefix: "tailwatch-setup-" });
  const shipped = await Deno.readTextFile(`${ROOT}deploy/nats/nats.conf`);
  await Deno.writeTextFile(
    `${dir}/nats.conf`,
    shipped.replace("store_dir: /data/jetstream", `store_dir: "${dir}/jetstream"`),
  );
  await Deno.copyFile(`${ROOT}deploy/nats/auth.conf`, `${dir}/auth.conf`);
  await using nats = await startNatsServer({ dir, configFile: `${dir}/nats.conf`, env: PASSWORDS });
  const env = {
    // As compose and the k8s Job give them: the user and password apart from the URL.
    NATS_URL: nats.url,
    NATS_USER: "setup",
    NATS_PASSWORD: PASSWORDS.NATS_SETUP_PASSWORD,
    CLICKHOUSE_URL: clickhouse.url,
    CLICKHOUSE_USER: CLICKHOUSE_ADMIN.username,
    CLICKHOUSE_PASSWORD: CLICKHOUSE_ADMIN.password,
    SETUP_WAIT_S: "20",
  };
  // As compose and the Job run it: the program, its environment, its exit code.
  for (let run = 0; run < 2; run++) {
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}deploy/setup.ts`],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(result.stderr);
    assertEquals(result.code, 0, log);
    assert(log.includes(run === 0 ? '"msg":"stream created"' : '"msg":"stream up to date"'), log);
    assert(/migrations up to date/.test(log), log);
  }
  const versions = await clickhouse.query("SELECT count() FROM profiler.schema_migrations");
  assert(Number(versions.trim()) >= 13, `every migration recorded once: ${versions}`);
  const tables = await clickhouse.query("SELECT count() FROM system.tables WHERE database = 'profiler'");
  assert(Number(tables.trim()) >= 8, `the schema is there: ${tables}`);
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}deploy/setup.ts`],
    env: { ...env, STREAM_REPLICAS: "many" },
    stdout: "null",
    stderr: "piped",
  }).output();
  assertEquals(bad.code, 2, "a bad setting exits 2");
  assert(/STREAM_REPLICAS/.test(new TextDecoder().decode(bad.stderr)));
  await nats.stop();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
});
