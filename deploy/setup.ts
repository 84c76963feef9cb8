/**
 * The setup step of a deployment (compose's one-shot `setup` service, the k8s Job `tailwatch-setup`):
 *
 * 1. waits for NATS and ClickHouse (up to SETUP_WAIT_S, default 300 s);
 * 2. creates the JetStream stream REQUEST_EVENTS, or updates it to this configuration: the stream is
 *    configuration applied here, once, as an account that may manage it (NATS user `setup`), so replicas,
 *    limits and subjects are set in one place (STREAM_* below; the prod overlay sets 3 replicas);
 * 3. optionally runs SETUP_INIT_SQL (a file of `;`-terminated statements as the admin user; the prod overlay's
 *    replicated schema), then `ingest/main.ts migrate` (the versioned migrations, recorded in
 *    profiler.schema_migrations, so a second run applies nothing).
 *
 * Exit 0 when all is in place, 1 when something failed (the log says what), 2 for a bad setting.
 *
 *   NATS_URL=nats://nats:4222 NATS_USER=setup NATS_PASSWORD=... CLICKHOUSE_URL=http://clickhouse:8123 \
 *   CLICKHOUSE_USER=tailwatch_admin CLICKHOUSE_PASSWORD=... deno run -A deploy/setup.ts
 *
 * NATS credentials as every process takes them (the kit's nats_config.ts): NATS_USER and NATS_PASSWORD, or
 * NATS_TOKEN, or in NATS_URL. STREAM_REPLICAS (1), STREAM_SUBJECTS (events.requests.>), STREAM_MAX_AGE_S
 * (604800), STREAM_MAX_BYTES (10737418240), STREAM_DUPLICATE_WINDOW_S (600): the kit's
 * DEFAULT_REQUEST_EVENTS_STREAM. The stream is applied by the kit's `applyRequestEventsStream`, the one
 * function that configures it (`./dev up` runs this program; the tests call the function); the services and
 * ingest only check it.
 */
import { applyRequestEventsStream, describeNats, type NatsConfig, natsConfig } from "@tailwatch/nats";
import { ConfigError } from "@tailwatch/runtime";
import {
  DEFAULT_REQUEST_EVENTS_STREAM,
  REQUEST_EVENTS_STREAM,
  requestEventsStreamConfig,
  type RequestEventsStreamSettings,
} from "@tailwatch/events";
import { createClickHouse } from "@tailwatch/ingest";
import { splitStatements } from "@tailwatch/ingest/migrations";
import { trustedSqlText } from "@tailwatch/ingest/sql";

const ROOT = new URL("../", import.meta.url).pathname;

export type StreamSettings = RequestEventsStreamSettings;

export interface SetupSettings {
  nats: NatsConfig;
  clickhouseUrl: string;
  clickhouseUser: string;
  clickhousePassword: string;
  database: string;
  stream: StreamSettings;
  initSql: string | undefined;
  waitS: number;
}

export class SettingsError extends Error {}

/** Reads the settings from the environment; every problem at once in a SettingsError. */
export function loadSetupSettings(env: Record<string, string | undefined>): SetupSettings {
  const problems: string[] = [];
  const integer = (name: string, fallback: number, min: number, max: number) => {
    const text = env[name];
    if (text === undefined || text === "") return fallback;
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      problems.push(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(text)}`);
      return fallback;
    }
    return value;
  };
  const defaults = DEFAULT_REQUEST_EVENTS_STREAM;
  const stream: StreamSettings = {
    replicas: integer("STREAM_REPLICAS", defaults.replicas, 1, 5),
    subjects: (env.STREAM_SUBJECTS ?? defaults.subjects.join(",")).split(",").map((s) => s.trim())
      .filter((s) => s),
    maxAgeS: integer("STREAM_MAX_AGE_S", defaults.maxAgeS, 60, 10 * 365 * 24 * 3600),
    maxBytes: integer("STREAM_MAX_BYTES", defaults.maxBytes, 1024 ** 2, Number.MAX_SAFE_INTEGER),
    duplicateWindowS: integer("STREAM_DUPLICATE_WINDOW_S", defaults.duplicateWindowS, 1, 24 * 3600),
  };
  if (stream.subjects.length === 0) problems.push("STREAM_SUBJECTS must name at least one subject");
  if (stream.duplicateWindowS > stream.maxAgeS) {
    problems.push("STREAM_DUPLICATE_WINDOW_S must not exceed STREAM_MAX_AGE_S");
  }
  const database = env.CLICKHOUSE_DATABASE ?? "profiler";
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(database)) {
    problems.push(`CLICKHOUSE_DATABASE: not a plain name: ${database}`);
  }
  for (const name of ["NATS_URL", "CLICKHOUSE_URL", "CLICKHOUSE_PASSWORD"]) {
    if (!env[name]) problems.push(`${name} must be set`);
  }
  let nats: NatsConfig | undefined;
  try {
    nats = natsConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(...error.problems);
  }
  if (problems.length > 0) throw new SettingsError(problems.join("; "));
  return {
    nats: nats!,
    clickhouseUrl: env.CLICKHOUSE_URL!,
    clickhouseUser: env.CLICKHOUSE_USER ?? "tailwatch_admin",
    clickhousePassword: env.CLICKHOUSE_PASSWORD!,
    database,
    stream,
    initSql: env.SETUP_INIT_SQL || undefined,
    waitS: integer("SETUP_WAIT_S", 300, 0, 3600),
  };
}

/** The stream's configuration (the kit's): file storage, limits retention, oldest discarded first, dedup. */
export const streamConfig = requestEventsStreamConfig;

function log(level: "info" | "warn" | "error", msg: string, fields: Record<string, unknown> = {}): void {
  console.error(
    JSON.stringify({ time: new Date().toISOString(), level, component: "setup", msg, ...fields }),
  );
}

async function retry<T>(what: string, waitS: number, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + waitS * 1000;
  for (let n = 0;; n++) {
    try {
      return await attempt();
    } catch (error) {
      if (Date.now() > deadline) {
        throw new Error(`${what}: ${error instanceof Error ? error.message : error}`);
      }
      if (n % 10 === 0) log("warn", `${what}: not yet, retrying`, { error: String(error) });
      await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 200 * 2 ** Math.min(n, 4))));
    }
  }
}

/**
 * Creates the stream or updates it to `settings` (the kit's applyRequestEventsStream), waiting up to `waitS` for
 * NATS to answer; returns what was done.
 */
export async function applyStream(
  nats: NatsConfig | string,
  settings: StreamSettings,
  waitS = 0,
): Promise<"created" | "updated" | "unchanged"> {
  const config = typeof nats === "string" ? natsConfig(nats) : nats;
  const outcome = await retry(
    `apply the stream on NATS at ${describeNats(config)}`,
    waitS,
    () => applyRequestEventsStream(config, settings),
  );
  log("info", outcome === "unchanged" ? "stream up to date" : `stream ${outcome}`, {
    stream: REQUEST_EVENTS_STREAM,
    replicas: settings.replicas,
    subjects: settings.subjects,
  });
  return outcome;
}

/** Runs a file of `;`-terminated statements (the prod overlay's replicated schema) as the admin user. */
async function runInitSql(settings: SetupSettings): Promise<void> {
  const clickhouse = createClickHouse({
    url: settings.clickhouseUrl,
    username: settings.clickhouseUser,
    password: settings.clickhousePassword,
    timeoutMs: 120_000,
  });
  const statements = splitStatements(await Deno.readTextFile(settings.initSql!));
  for (const statement of statements) {
    await clickhouse.exec(trustedSqlText(statement.replaceAll("{{database}}", settings.database)));
  }
  log("info", "init SQL applied", { file: settings.initSql, statements: statements.length });
}

export async function setup(settings: SetupSettings): Promise<void> {
  await applyStream(settings.nats, settings.stream, settings.waitS);
  const clickhouse = createClickHouse({
    url: settings.clickhouseUrl,
    username: settings.clickhouseUser,
    password: settings.clickhousePassword,
  });
  await retry(`reach ClickHouse at ${settings.clickhouseUrl}`, settings.waitS, async () => {
    if (!(await clickhouse.ping())) throw new Error("/ping did not answer");
  });
  if (settings.initSql) await runInitSql(settings);
  // The migrations, exactly as an operator runs them: ingest's own command, in this environment.
  const migrate = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}ingest/main.ts`, "migrate"],
    env: {
      CLICKHOUSE_URL: settings.clickhouseUrl,
      CLICKHOUSE_USER: settings.clickhouseUser,
      CLICKHOUSE_PASSWORD: settings.clickhousePassword,
      CLICKHOUSE_DATABASE: settings.database,
    },
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (migrate.code !== 0) throw new Error(`ingest/main.ts migrate exited ${migrate.code}`);
}

if (import.meta.main) {
  let settings: SetupSettings;
  try {
    settings = loadSetupSettings(Deno.env.toObject());
  } catch (error) {
    if (!(error instanceof SettingsError)) throw error;
    log("error", `configuration: ${error.message}`);
    Deno.exit(2);
  }
  try {
    await setup(settings);
    log("info", "setup done");
    Deno.exit(0);
  } catch (error) {
    log("error", "setup failed", { error: error instanceof Error ? error.message : String(error) });
    Deno.exit(1);
  }
}
