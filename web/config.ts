/**
 * The web server's configuration: read from the environment once at start and validated into a typed object
 * with the kit's `createEnvReader` (every problem at once, with the variable's name); main.ts prints a
 * `ConfigError` and exits with code 2.
 */
import { ConfigError, createEnvReader, type Env } from "@tailwatch/runtime";

export type Role = "readonly" | "admin";

export interface WebUser {
  name: string;
  role: Role;
  /** `pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>` (see auth.ts, `hashPassword`). */
  passwordHash: string;
}

export interface MetricsTarget {
  /** Process name shown on the overview: catalog, orders, payments, ingest. */
  name: string;
  /** Its Prometheus text endpoint. */
  url: string;
}

export interface WebConfig {
  /** WEB_HOST: interface to listen on. Default "127.0.0.1"; anything else requires sign-in. */
  host: string;
  /** WEB_PORT: port; 0 picks a free one. Default 8080. */
  port: number;
  /** CLICKHOUSE_URL: ClickHouse HTTP interface. Default "http://127.0.0.1:8123". */
  clickhouseUrl: string;
  /** CLICKHOUSE_USER: the read-only user. Default "tailwatch_reader"; the admin user is refused. */
  clickhouseUser: string;
  /** CLICKHOUSE_PASSWORD: its password. Default "" (empty). */
  clickhousePassword: string;
  /** CLICKHOUSE_DATABASE: database of the projections. Default "profiler". */
  database: string;
  /** WEB_SERVICES: services always listed, even before they have data. Default "catalog,orders,payments". */
  services: string[];
  /**
   * WEB_METRICS_TARGETS: `name=url` pairs, comma-separated, of the processes whose /metrics the overview reads.
   * Default the local stack: catalog :8081, orders :8082, payments :8083, ingest :9464.
   */
  metricsTargets: MetricsTarget[];
  /**
   * WEB_PROMETHEUS_URL: read the processes' metrics from this Prometheus instead of their /metrics, summed over
   * every instance of a job, which is what a deployment with several pods per process needs (a Service name
   * reaches one pod at random). Excludes WEB_METRICS_TARGETS. Default unset: each process's /metrics.
   */
  prometheusUrl?: string;
  /** WEB_PROMETHEUS_JOBS: the Prometheus jobs read, comma-separated. Default "catalog,orders,payments,ingest". */
  prometheusJobs: string[];
  /** WEB_PROMETHEUS_RATE_WINDOW_S: the range of `rate()` over Prometheus's samples, in seconds. Default 60. */
  prometheusRateWindowS: number;
  /** WEB_SAMPLE_INTERVAL_MS: how often /metrics is read (and process history sampled). Default 2000. */
  sampleIntervalMs: number;
  /** WEB_HISTORY_S: seconds of process CPU and memory history kept in memory. Default 900. */
  historyS: number;
  /** WEB_STALE_AFTER_S: data older than this while requests are served raises the stale banner. Default 15. */
  staleAfterS: number;
  /** WEB_STATE_DIR: where the alert history (SQLite) lives. Default ".data/web" under the repository. */
  stateDir: string;
  /** WEB_ALERT_RULES_FILE: the alert rules (JSON), edited by the Alerts page. Default `<state dir>/alert-rules.json`. */
  alertRulesFile: string;
  /** WEB_WEBHOOK_ALLOWLIST: origins (scheme://host[:port]) alert webhooks may POST to, comma-separated. Default none. */
  webhookAllowlist: string[];
  /** WEB_LOAD_RESULTS_DIR: where load runs write `load-<time>.json` (markers on the charts). Default bench/results. */
  loadResultsDir: string;
  /** WEB_AUTH_REQUIRED: require sign-in even on a loopback address. Default false (always true elsewhere). */
  authRequired: boolean;
  /** WEB_USERS: `name:role:hash` entries, comma-separated (role readonly or admin; hash from `main.ts hash-password`). */
  users: WebUser[];
  /** WEB_SESSION_TTL_S: session lifetime in seconds. Default 28800 (8 h). */
  sessionTtlS: number;
  /** WEB_COOKIE_SECURE: mark cookies Secure (behind TLS). Default false. */
  cookieSecure: boolean;
  /** WEB_MAX_SSE_CLIENTS: live connections at once; past it a new one gets 503. Default 1000. */
  maxSseClients: number;
  /** WEB_MAX_VIEWS: distinct live views at once; past it a new one gets 503. Default 200. */
  maxViews: number;
  /** WEB_LOG_LEVEL: debug, info, warn or error. Default info. */
  logLevel: "debug" | "info" | "warn" | "error";
}

export { ConfigError };

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PROCESS_NAME = /^[a-z][a-z0-9_-]{0,31}$/;
const USER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const HASH = /^pbkdf2-sha256\$\d{4,7}\$[A-Za-z0-9+/=]{16,}\$[A-Za-z0-9+/=]{32,}$/;

export const DEFAULT_METRICS_TARGETS =
  "catalog=http://127.0.0.1:8081/metrics,orders=http://127.0.0.1:8082/metrics," +
  "payments=http://127.0.0.1:8083/metrics,ingest=http://127.0.0.1:9464/metrics";

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Parses an origin for the webhook allow-list; undefined when it is not a plain http(s) origin. */
export function parseOrigin(text: string): string | undefined {
  try {
    const url = new URL(text);
    if (url.protocol !== "http:" && url.protocol !== "https:") return undefined;
    if (url.username || url.password) return undefined;
    if (url.pathname !== "/" || url.search || url.hash) return undefined;
    return url.origin;
  } catch {
    return undefined;
  }
}

export function loadWebConfig(env: Env = Deno.env.toObject()): WebConfig {
  const read = createEnvReader(env);
  const host = read.string("WEB_HOST", "127.0.0.1");
  const port = read.integer("WEB_PORT", 8080, 0, 65535);
  const clickhouseUrl = read.url("CLICKHOUSE_URL", "http://127.0.0.1:8123", ["http:", "https:"]);
  if (clickhouseUrl.includes(",")) read.problems.push("CLICKHOUSE_URL must be one URL");
  const clickhouseUser = read.string("CLICKHOUSE_USER", "tailwatch_reader");
  if (clickhouseUser === "tailwatch_admin") {
    read.problems.push("CLICKHOUSE_USER must be the read-only user (tailwatch_reader), never the admin user");
  }
  const clickhousePassword = env.CLICKHOUSE_PASSWORD ?? "";
  const database = read.string("CLICKHOUSE_DATABASE", "profiler");
  if (!NAME.test(database)) {
    read.problems.push(`CLICKHOUSE_DATABASE must be a plain name, got ${JSON.stringify(database)}`);
  }

  const services = read.string("WEB_SERVICES", "catalog,orders,payments").split(",").map((s) => s.trim())
    .filter((s) => s !== "");
  for (const service of services) {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(service)) {
      read.problems.push(`WEB_SERVICES: ${JSON.stringify(service)} is not a service name`);
    }
  }

  const metricsTargets: MetricsTarget[] = [];
  const targetsText = env.WEB_METRICS_TARGETS === undefined
    ? DEFAULT_METRICS_TARGETS
    : env.WEB_METRICS_TARGETS;
  for (const part of targetsText.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const eq = part.indexOf("=");
    const name = part.slice(0, eq);
    const url = part.slice(eq + 1);
    let ok = eq > 0 && PROCESS_NAME.test(name);
    try {
      ok &&= ["http:", "https:"].includes(new URL(url).protocol);
    } catch {
      ok = false;
    }
    if (!ok) {
      read.problems.push(
        `WEB_METRICS_TARGETS: ${JSON.stringify(part)} must be name=http(s)://host:port/path`,
      );
    } else if (name === "web" || metricsTargets.some((t) => t.name === name)) {
      read.problems.push(`WEB_METRICS_TARGETS: the name ${JSON.stringify(name)} is taken`);
    } else metricsTargets.push({ name, url });
  }
  if (metricsTargets.length > 32) read.problems.push("WEB_METRICS_TARGETS: at most 32 targets");

  const prometheusText = env.WEB_PROMETHEUS_URL?.trim() ?? "";
  let prometheusUrl: string | undefined;
  if (prometheusText !== "") {
    prometheusUrl = read.url("WEB_PROMETHEUS_URL", "", ["http:", "https:"]).replace(/\/+$/, "");
    if (prometheusUrl.includes(",")) read.problems.push("WEB_PROMETHEUS_URL must be one URL");
    if (env.WEB_METRICS_TARGETS !== undefined) {
      read.problems.push("WEB_PROMETHEUS_URL and WEB_METRICS_TARGETS exclude each other: set one");
    }
  }
  const prometheusJobs = read.string("WEB_PROMETHEUS_JOBS", "catalog,orders,payments,ingest").split(",")
    .map((j) => j.trim()).filter((j) => j !== "");
  for (const job of prometheusJobs) {
    if (!PROCESS_NAME.test(job) || job === "web") {
      read.problems.push(`WEB_PROMETHEUS_JOBS: ${JSON.stringify(job)} is not a process name (or is "web")`);
    }
  }
  if (new Set(prometheusJobs).size !== prometheusJobs.length) {
    read.problems.push("WEB_PROMETHEUS_JOBS: a job is named twice");
  }
  if (prometheusJobs.length > 32) read.problems.push("WEB_PROMETHEUS_JOBS: at most 32 jobs");
  const prometheusRateWindowS = read.integer("WEB_PROMETHEUS_RATE_WINDOW_S", 60, 2, 3600);

  const sampleIntervalMs = read.integer("WEB_SAMPLE_INTERVAL_MS", 2000, 250, 60_000);
  const historyS = read.integer("WEB_HISTORY_S", 900, 10, 86_400);
  const staleAfterS = read.integer("WEB_STALE_AFTER_S", 15, 2, 3600);
  const stateDir = read.string("WEB_STATE_DIR", `${ROOT}/.data/web`);
  const alertRulesFile = read.string("WEB_ALERT_RULES_FILE", `${stateDir}/alert-rules.json`);
  const webhookAllowlist: string[] = [];
  for (const part of (env.WEB_WEBHOOK_ALLOWLIST ?? "").split(",").map((p) => p.trim()).filter((p) => p)) {
    const origin = parseOrigin(part);
    if (origin === undefined) {
      read.problems.push(
        `WEB_WEBHOOK_ALLOWLIST: ${JSON.stringify(part)} must be an origin like https://host:port`,
      );
    } else webhookAllowlist.push(origin);
  }
  const loadResultsDir = read.string("WEB_LOAD_RESULTS_DIR", `${ROOT}/bench/results`);

  const authRequired = read.boolean("WEB_AUTH_REQUIRED", false) || !isLoopback(host);
  const users: WebUser[] = [];
  for (const part of (env.WEB_USERS ?? "").split(",").map((p) => p.trim()).filter((p) => p !== "")) {
    const [name, role, passwordHash, ...rest] = part.split(":");
    if (rest.length > 0 || !USER_NAME.test(name ?? "") || (role !== "readonly" && role !== "admin")) {
      read.problems.push(
        `WEB_USERS: entries are name:role:hash with role readonly or admin (entry ${users.length + 1})`,
      );
    } else if (!HASH.test(passwordHash ?? "")) {
      read.problems.push(
        `WEB_USERS: the hash of ${name} is not pbkdf2-sha256$iterations$salt$hash (make one with main.ts hash-password)`,
      );
    } else if (users.some((u) => u.name === name)) {
      read.problems.push(`WEB_USERS: ${name} is listed twice`);
    } else users.push({ name, role, passwordHash });
  }
  if (authRequired && users.length === 0) {
    read.problems.push(
      `WEB_USERS must list at least one user: sign-in is required ${
        isLoopback(host) ? "(WEB_AUTH_REQUIRED)" : `because WEB_HOST ${host} is not a loopback address`
      }`,
    );
  }
  const sessionTtlS = read.integer("WEB_SESSION_TTL_S", 28_800, 60, 30 * 86_400);
  const cookieSecure = read.boolean("WEB_COOKIE_SECURE", false);
  const maxSseClients = read.integer("WEB_MAX_SSE_CLIENTS", 1000, 1, 100_000);
  const maxViews = read.integer("WEB_MAX_VIEWS", 200, 1, 10_000);
  const logLevel = read.oneOf("WEB_LOG_LEVEL", "info", ["debug", "info", "warn", "error"] as const);
  read.done();
  return {
    host,
    port,
    clickhouseUrl,
    clickhouseUser,
    clickhousePassword,
    database,
    services,
    metricsTargets,
    prometheusUrl,
    prometheusJobs,
    prometheusRateWindowS,
    sampleIntervalMs,
    historyS,
    staleAfterS,
    stateDir,
    alertRulesFile,
    webhookAllowlist,
    loadResultsDir,
    authRequired,
    users,
    sessionTtlS,
    cookieSecure,
    maxSseClients,
    maxViews,
    logLevel,
  };
}
