import { freePorts, waitUntil } from "./ports.ts";
import { type ManagedProcess, spawnLogged } from "./process.ts";

/** The users every Tailwatch ClickHouse has (see ingest/README.md): an admin and a limited read-only user. */
export const CLICKHOUSE_ADMIN = { username: "tailwatch_admin", password: "admin-test-password" } as const;
export const CLICKHOUSE_READONLY = {
  username: "tailwatch_reader",
  password: "reader-test-password",
} as const;

/** A private clickhouse-server on free ports with its own data directory. */
export interface ClickHouseServer extends AsyncDisposable {
  /** HTTP interface, e.g. http://127.0.0.1:34567 */
  readonly url: string;
  readonly httpPort: number;
  readonly tcpPort: number;
  readonly dir: string;
  /** The running server's pid (undefined while stopped): benchmarks read its CPU time from /proc. */
  readonly pid: number | undefined;
  /** Stops the server (SIGTERM, or SIGKILL for a crash) keeping its data and ports. */
  stop(signal?: Deno.Signal): Promise<void>;
  /** Starts it again on the same ports with the same data. */
  start(): Promise<void>;
  /** Runs one statement as the admin user over HTTP and returns the body (throws on an error status). */
  query(sql: string): Promise<string>;
}

export interface ClickHouseServerOptions {
  /** Directory for data, config and logs; a new temporary one by default (removed on dispose). */
  dir?: string;
  /** Passwords for the two users; the test defaults above otherwise. */
  adminPassword?: string;
  readonlyPassword?: string;
}

function xmlEscape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

/** Renders the server config; shared with ./dev so tests and the local stack run the same settings. */
export function clickhouseConfigXml(dir: string, httpPort: number, tcpPort: number): string {
  return `<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>${xmlEscape(dir)}/log/clickhouse-server.log</log>
    <errorlog>${xmlEscape(dir)}/log/clickhouse-server.err.log</errorlog>
    <size>100M</size>
    <count>2</count>
  </logger>
  <http_port>${httpPort}</http_port>
  <tcp_port>${tcpPort}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>${xmlEscape(dir)}/data/</path>
  <tmp_path>${xmlEscape(dir)}/tmp/</tmp_path>
  <user_files_path>${xmlEscape(dir)}/user_files/</user_files_path>
  <format_schema_path>${xmlEscape(dir)}/format_schemas/</format_schema_path>
  <users_config>${xmlEscape(dir)}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
`;
}

/** Renders the users file: the admin user, and a read-only user whose limits protect the server. */
export function clickhouseUsersXml(adminPassword: string, readonlyPassword: string): string {
  return `<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
      <load_balancing>random</load_balancing>
    </default>
    <readonly>
      <!-- readonly=1: SELECT only, and the user cannot change any setting, so the limits below hold. -->
      <readonly>1</readonly>
      <max_execution_time>30</max_execution_time>
      <max_result_rows>1000000</max_result_rows>
      <result_overflow_mode>throw</result_overflow_mode>
      <max_memory_usage>2000000000</max_memory_usage>
    </readonly>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>readonly</profile>
      <quota>default</quota>
      <allow_databases><database>system</database></allow_databases>
    </default>
    <${CLICKHOUSE_ADMIN.username}>
      <password>${xmlEscape(adminPassword)}</password>
      <networks><ip>::/0</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </${CLICKHOUSE_ADMIN.username}>
    <${CLICKHOUSE_READONLY.username}>
      <password>${xmlEscape(readonlyPassword)}</password>
      <networks><ip>::/0</ip></networks>
      <profile>readonly</profile>
      <quota>default</quota>
    </${CLICKHOUSE_READONLY.username}>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
`;
}

/** Starts clickhouse-server on free ports and waits until it answers /ping. */
export async function startClickHouseServer(
  options: ClickHouseServerOptions = {},
): Promise<ClickHouseServer> {
  const dir = options.dir ?? await Deno.makeTempDir({ prefix: "tailwatch-clickhouse-" });
  const ownsDir = options.dir === undefined;
  const adminPassword = options.adminPassword ?? CLICKHOUSE_ADMIN.password;
  const readonlyPassword = options.readonlyPassword ?? CLICKHOUSE_READONLY.password;
  const [httpPort, tcpPort] = freePorts(2);
  for (const sub of ["log", "data", "tmp", "user_files", "format_schemas"]) {
    await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
  }
  await Deno.writeTextFile(`${dir}/config.xml`, clickhouseConfigXml(dir, httpPort, tcpPort));
  await Deno.writeTextFile(`${dir}/users.xml`, clickhouseUsersXml(adminPassword, readonlyPassword));
  const url = `http://127.0.0.1:${httpPort}`;
  let process: ManagedProcess | undefined;

  const start = async () => {
    process = await spawnLogged(
      "clickhouse-server",
      [`--config-file=${dir}/config.xml`],
      `${dir}/log/stdout.log`,
    );
    await waitUntil("clickhouse-server /ping", async () => {
      const response = await fetch(`${url}/ping`);
      await response.body?.cancel();
      return response.ok;
    }, 60_000);
  };
  const stop = async (signal: Deno.Signal = "SIGTERM") => {
    await process?.stop(signal, 30_000);
    process = undefined;
  };
  const query = async (sql: string): Promise<string> => {
    const response = await fetch(url, {
      method: "POST",
      body: sql,
      headers: {
        "X-ClickHouse-User": CLICKHOUSE_ADMIN.username,
        "X-ClickHouse-Key": adminPassword,
      },
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`ClickHouse ${response.status}: ${text.trim()}`);
    return text;
  };
  await start();
  return {
    url,
    httpPort,
    tcpPort,
    dir,
    get pid() {
      return process?.pid;
    },
    stop,
    start,
    query,
    async [Symbol.asyncDispose]() {
      await stop();
      if (ownsDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
