/**
 * Alert rules: "p99 of METHOD above X ms for Y s" and "error rate above Z % for Y s", kept in a JSON file
 * (edited from the Alerts page by an admin), evaluated every second on the server against
 * `latency_percentiles`, with their firing/resolved history in an SQLite file the web server owns
 * (`node:sqlite`; ClickHouse stays read-only for the web) and an optional webhook POST on each change.
 *
 * No flapping: the evaluator walks the percentile rows in time order and handles each second once. A read
 * that misses rows (18.16's Buffer can hide a flush's rows from one query) or a quiet key only delays the
 * next decision; it never counts as a good second. A rule fires once its value was above the threshold for
 * `for_s` consecutive seconds of data and resolves once it was at or below it for `for_s` seconds
 * (hysteresis in time).
 */
import { DatabaseSync } from "node:sqlite";
import { sql } from "@tailwatch/ingest/sql";
import type { Logger } from "@tailwatch/runtime";
import { num, type Reader } from "./clickhouse.ts";
import type { AlertEventView, Block, FiringAlert, RuleView } from "./islands/model.ts";
import { type Tables, toCells } from "./queries.ts";

export type RuleKind = "p99_above" | "error_rate_above";

export interface AlertRule {
  id: string;
  name: string;
  kind: RuleKind;
  service: string;
  /** "" = the whole service. */
  method: string;
  /** ms for p99_above, % for error_rate_above. */
  threshold: number;
  forS: number;
  /** Percentile window the rule reads (10, 60 or 300 s). */
  windowS: number;
  /** "" or a URL whose origin is on the allow-list. */
  webhook: string;
}

export const MAX_RULES = 100;
const RULE_ID = /^[a-z0-9][a-z0-9_-]{0,63}$/;
// deno-lint-ignore no-control-regex
const NAME_TEXT = /^[^\u0000-\u001f\u007f]{1,120}$/;

/** Validates one rule from JSON or a form; returns the rule or the problems, each naming its field. */
export function validateRule(
  input: Record<string, unknown>,
  webhookAllowlist: readonly string[],
): { rule?: AlertRule; problems: string[] } {
  const problems: string[] = [];
  const text = (name: string, fallback?: string): string => {
    const value = input[name] ?? fallback;
    if (typeof value !== "string") {
      problems.push(`${name} must be text`);
      return "";
    }
    return value.trim();
  };
  const number = (name: string, min: number, max: number): number => {
    const raw = input[name];
    const value = typeof raw === "number"
      ? raw
      : typeof raw === "string" && raw.trim() !== ""
      ? Number(raw)
      : NaN;
    if (!Number.isFinite(value) || value < min || value > max) {
      problems.push(
        `${name} must be a number from ${min} to ${max}, got ${
          JSON.stringify(String(raw ?? "")).slice(0, 40)
        }`,
      );
      return min;
    }
    return value;
  };
  const id = text("id");
  if (!RULE_ID.test(id)) {
    problems.push("id must be 1-64 characters of a-z, 0-9, _ and -, starting with a letter or digit");
  }
  const name = text("name", id);
  if (!NAME_TEXT.test(name)) problems.push("name must be 1-120 characters without control characters");
  const kind = text("kind");
  if (kind !== "p99_above" && kind !== "error_rate_above") {
    problems.push("kind must be p99_above or error_rate_above");
  }
  const service = text("service");
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(service)) problems.push("service must be a service name");
  const method = text("method", "");
  if (method !== "" && !/^[A-Za-z0-9_./-]{1,200}$/.test(method)) {
    problems.push("method must be a full method name or empty");
  }
  const threshold = kind === "error_rate_above"
    ? number("threshold", 0, 100)
    : number("threshold", 0, 3_600_000);
  const forS = Math.round(number("for_s", 1, 3600));
  const windowS = input.window_s === undefined || input.window_s === "" ? 10 : number("window_s", 10, 300);
  if (![10, 60, 300].includes(windowS)) problems.push("window_s must be 10, 60 or 300");
  const webhook = text("webhook", "");
  if (webhook !== "") {
    const problem = webhookProblem(webhook, webhookAllowlist);
    if (problem) problems.push(problem);
  }
  if (problems.length) return { problems };
  return {
    rule: { id, name, kind: kind as RuleKind, service, method, threshold, forS, windowS, webhook },
    problems,
  };
}

/** Why a webhook URL is refused, or undefined when its origin is on the allow-list. */
export function webhookProblem(url: string, allowlist: readonly string[]): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "webhook must be an absolute http(s) URL";
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return "webhook must be an http(s) URL";
  if (parsed.username || parsed.password) return "webhook must not carry credentials";
  if (!allowlist.includes(parsed.origin)) {
    return `webhook origin ${parsed.origin} is not on the allow-list (WEB_WEBHOOK_ALLOWLIST: ${
      allowlist.join(", ") || "empty"
    })`;
  }
  return undefined;
}

function ruleToJson(rule: AlertRule): Record<string, unknown> {
  return {
    id: rule.id,
    name: rule.name,
    kind: rule.kind,
    service: rule.service,
    method: rule.method,
    threshold: rule.threshold,
    for_s: rule.forS,
    window_s: rule.windowS,
    ...(rule.webhook ? { webhook: rule.webhook } : {}),
  };
}

/** Reads the rules file: the valid rules, and one message per problem (a missing file is no rules). */
export function readRulesFile(
  path: string,
  allowlist: readonly string[],
): { rules: AlertRule[]; errors: string[] } {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { rules: [], errors: [] };
    return { rules: [], errors: [`cannot read ${path}: ${(error as Error).message}`] };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    return { rules: [], errors: [`${path} is not JSON: ${(error as Error).message}`] };
  }
  const list = (parsed as { rules?: unknown })?.rules;
  if (!Array.isArray(list)) return { rules: [], errors: [`${path} must be {"rules": [...]}`] };
  const rules: AlertRule[] = [];
  const errors: string[] = [];
  list.forEach((item, i) => {
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      errors.push(`rule ${i + 1}: must be an object`);
      return;
    }
    const { rule, problems } = validateRule(item as Record<string, unknown>, allowlist);
    if (!rule) errors.push(`rule ${i + 1}: ${problems.join("; ")}`);
    else if (rules.some((r) => r.id === rule.id)) errors.push(`rule ${i + 1}: id ${rule.id} is used twice`);
    else if (rules.length >= MAX_RULES) errors.push(`rule ${i + 1}: more than ${MAX_RULES} rules`);
    else rules.push(rule);
  });
  return { rules, errors };
}

export function writeRulesFile(path: string, rules: AlertRule[]): void {
  const dir = path.slice(0, path.lastIndexOf("/"));
  if (dir) Deno.mkdirSync(dir, { recursive: true });
  const tmp = `${path}.tmp-${Deno.pid}`;
  Deno.writeTextFileSync(tmp, JSON.stringify({ rules: rules.map(ruleToJson) }, null, 2) + "\n");
  Deno.renameSync(tmp, path);
}

interface RuleState {
  lastT: number;
  breachStart: number | null;
  okStart: number | null;
  firing: boolean;
  sinceMs: number | null;
  value: number | null;
  valueAtS: number | null;
}

export interface AlertEngine extends AsyncDisposable {
  rules(): AlertRule[];
  fileErrors(): string[];
  views(): RuleView[];
  firing(): FiringAlert[];
  history(limit?: number): AlertEventView[];
  evaluation(): Block;
  /** Adds or replaces a rule (by id) and saves the file. */
  upsert(rule: AlertRule): void;
  remove(id: string): boolean;
  /** One evaluation now (tests); the engine also runs one every second. */
  evaluateNow(): Promise<void>;
  close(): Promise<void>;
}

export interface AlertEngineOptions {
  reader: Reader;
  tables: Tables;
  rulesFile: string;
  historyFile: string;
  webhookAllowlist: readonly string[];
  logger: Logger;
  /** Evaluation period; default 1000 ms. 0: only evaluateNow (tests). */
  intervalMs?: number;
  onChange?: () => void;
}

const HISTORY_KEEP = 10_000;

export function createAlertEngine(options: AlertEngineOptions): AlertEngine {
  const { reader, logger } = options;
  const historyDir = options.historyFile.slice(0, options.historyFile.lastIndexOf("/"));
  if (historyDir) Deno.mkdirSync(historyDir, { recursive: true });
  const db = new DatabaseSync(options.historyFile);
  db.exec(`CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    at_ms INTEGER NOT NULL,
    data_ts INTEGER NOT NULL,
    value REAL NOT NULL,
    threshold REAL NOT NULL,
    message TEXT NOT NULL
  )`);
  const insertEvent = db.prepare(
    "INSERT INTO alert_events (rule_id, rule_name, state, at_ms, data_ts, value, threshold, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
  );
  const trim = db.prepare("DELETE FROM alert_events WHERE id <= (SELECT max(id) FROM alert_events) - ?");
  const recent = db.prepare(
    "SELECT id, rule_id, rule_name, state, at_ms, value, threshold, message FROM alert_events ORDER BY id DESC LIMIT ?",
  );
  const lastOfRule = db.prepare(
    "SELECT state, at_ms FROM alert_events WHERE rule_id = ? ORDER BY id DESC LIMIT 1",
  );

  let loaded = readRulesFile(options.rulesFile, options.webhookAllowlist);
  let fileMtime = mtimeOf(options.rulesFile);
  const states = new Map<string, RuleState>();
  const stateOf = (rule: AlertRule): RuleState => {
    let state = states.get(rule.id);
    if (!state) {
      // A rule that was firing when the server stopped is still firing until the data says otherwise.
      const last = lastOfRule.get(rule.id) as { state: string; at_ms: number } | undefined;
      state = {
        lastT: 0,
        breachStart: null,
        okStart: null,
        firing: last?.state === "firing",
        sinceMs: last?.state === "firing" ? last.at_ms : null,
        value: null,
        valueAtS: null,
      };
      states.set(rule.id, state);
    }
    return state;
  };
  for (const rule of loaded.rules) stateOf(rule);
  if (loaded.errors.length) logger.warn("alert rules file has problems", { errors: loaded.errors });

  let evaluation: Block = {
    id: "evaluation",
    title: "Alert evaluation (latency_percentiles, latest version of each row)",
    columns: [],
    rows: [],
    readAtMs: 0,
  };

  const record = (rule: AlertRule, state: "firing" | "resolved", dataTs: number, value: number) => {
    const unit = rule.kind === "p99_above" ? "ms" : "%";
    const what = rule.kind === "p99_above" ? "p99" : "error rate";
    const message = `${rule.name}: ${what} of ${rule.method || `${rule.service} (all methods)`} ${
      state === "firing" ? "above" : "back at or below"
    } ${rule.threshold} ${unit} for ${rule.forS} s (now ${value.toFixed(2)} ${unit})`;
    const atMs = Date.now();
    insertEvent.run(rule.id, rule.name, state, atMs, dataTs, value, rule.threshold, message);
    trim.run(HISTORY_KEEP);
    logger.info("alert " + state, { rule: rule.id, value, threshold: rule.threshold });
    if (rule.webhook) void postWebhook(rule, state, value, atMs, message);
  };

  const postWebhook = async (
    rule: AlertRule,
    state: string,
    value: number,
    atMs: number,
    message: string,
  ) => {
    // Checked again at send time: the allow-list is the only way out.
    const problem = webhookProblem(rule.webhook, options.webhookAllowlist);
    if (problem) {
      logger.warn("webhook refused", { rule: rule.id, problem });
      return;
    }
    try {
      const response = await fetch(rule.webhook, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          rule: ruleToJson(rule),
          state,
          value,
          threshold: rule.threshold,
          at: new Date(atMs).toISOString(),
          message,
        }),
        redirect: "manual",
        signal: AbortSignal.timeout(5000),
      });
      await response.body?.cancel();
      if (!response.ok) logger.warn("webhook answered an error", { rule: rule.id, status: response.status });
    } catch (error) {
      logger.warn("webhook failed", { rule: rule.id, error: String(error) });
    }
  };

  const evaluateNow = async () => {
    const mtime = mtimeOf(options.rulesFile);
    if (mtime !== fileMtime) {
      fileMtime = mtime;
      loaded = readRulesFile(options.rulesFile, options.webhookAllowlist);
    }
    const rules = loaded.rules;
    for (const id of [...states.keys()]) if (!rules.some((r) => r.id === id)) states.delete(id);
    if (rules.length === 0) return;
    const nowS = Math.floor(Date.now() / 1000);
    const lookback = Math.max(...rules.map((r) => r.forS)) + 60;
    const keys = [...new Set(rules.map((r) => JSON.stringify([r.windowS, r.service, r.method])))].map((k) =>
      JSON.parse(k) as [number, string, string]
    );
    const keyList = keys.map(([w, s, m]) => sql`(${w}, ${s}, ${m})`).reduce((a, b) => sql`${a}, ${b}`);
    const query = sql`SELECT
    toUInt32(ts) AS t,
    window_s,
    service,
    method,
    argMax(count, version) AS requests,
    argMax(p99_us, version) AS p99_us,
    argMax(error_rate, version) AS error_rate
FROM ${options.tables.latencyPercentiles}
WHERE ts > toDateTime(${nowS - lookback}) AND (window_s, service, method) IN (${keyList})
GROUP BY ts, window_s, service, method
ORDER BY t`;
    const columns = ["t", "window_s", "service", "method", "requests", "p99_us", "error_rate"];
    let rows: Record<string, unknown>[];
    try {
      rows = await reader.rows<Record<string, unknown>>(query);
    } catch (error) {
      evaluation = {
        ...evaluation,
        sql: query.text,
        columns,
        rows: [],
        error: String((error as Error).message),
        readAtMs: Date.now(),
      };
      return; // no data: no decision
    }
    evaluation = {
      ...evaluation,
      sql: query.text,
      columns,
      rows: toCells(columns, rows),
      error: undefined,
      readAtMs: Date.now(),
    };
    let changed = false;
    for (const rule of rules) {
      const state = stateOf(rule);
      for (const row of rows) {
        if (
          num(row.window_s) !== rule.windowS || row.service !== rule.service || row.method !== rule.method
        ) continue;
        const t = num(row.t);
        if (t <= state.lastT) continue; // each second once, in order; a late-shown second is not replayed
        state.lastT = t;
        const value = rule.kind === "p99_above" ? num(row.p99_us) / 1000 : num(row.error_rate) * 100;
        state.value = value;
        state.valueAtS = t;
        if (value > rule.threshold) {
          state.okStart = null;
          state.breachStart ??= t;
          if (!state.firing && t - state.breachStart + 1 >= rule.forS) {
            state.firing = true;
            state.sinceMs = Date.now();
            record(rule, "firing", t, value);
            changed = true;
          }
        } else {
          state.breachStart = null;
          state.okStart ??= t;
          if (state.firing && t - state.okStart + 1 >= rule.forS) {
            state.firing = false;
            state.sinceMs = null;
            record(rule, "resolved", t, value);
            changed = true;
          }
        }
      }
    }
    if (changed) options.onChange?.();
  };

  let running = false;
  const intervalMs = options.intervalMs ?? 1000;
  const timer = intervalMs > 0
    ? setInterval(async () => {
      if (running) return;
      running = true;
      try {
        await evaluateNow();
      } catch (error) {
        logger.error("alert evaluation failed", { error: String(error) });
      } finally {
        running = false;
      }
    }, intervalMs)
    : undefined;

  const save = () => {
    writeRulesFile(options.rulesFile, loaded.rules);
    fileMtime = mtimeOf(options.rulesFile);
  };
  const close = () => {
    if (timer !== undefined) clearInterval(timer);
    db.close();
    return Promise.resolve();
  };
  return {
    rules: () => loaded.rules,
    fileErrors: () => loaded.errors,
    views: () =>
      loaded.rules.map((rule) => {
        const state = stateOf(rule);
        return {
          id: rule.id,
          name: rule.name,
          kind: rule.kind,
          service: rule.service,
          method: rule.method,
          threshold: rule.threshold,
          forS: rule.forS,
          windowS: rule.windowS,
          webhook: rule.webhook,
          state: state.firing
            ? "firing"
            : state.valueAtS === null
            ? "no data"
            : state.breachStart !== null
            ? "pending"
            : "ok",
          value: state.value,
          valueAtS: state.valueAtS,
          sinceMs: state.sinceMs,
        };
      }),
    firing: () =>
      loaded.rules.filter((r) => stateOf(r).firing).map((rule) => ({
        id: rule.id,
        name: rule.name,
        sinceMs: stateOf(rule).sinceMs ?? 0,
        value: stateOf(rule).value ?? NaN,
        threshold: rule.threshold,
        unit: rule.kind === "p99_above" ? "ms" : "%",
      })),
    history: (limit = 50) =>
      (recent.all(limit) as Record<string, unknown>[]).map((r) => ({
        id: Number(r.id),
        ruleId: String(r.rule_id),
        ruleName: String(r.rule_name),
        state: r.state === "firing" ? "firing" : "resolved",
        atMs: Number(r.at_ms),
        value: Number(r.value),
        threshold: Number(r.threshold),
        message: String(r.message),
      })),
    evaluation: () => evaluation,
    upsert(rule) {
      const index = loaded.rules.findIndex((r) => r.id === rule.id);
      if (index < 0 && loaded.rules.length >= MAX_RULES) throw new Error(`at most ${MAX_RULES} rules`);
      const rules = [...loaded.rules];
      if (index >= 0) {
        rules[index] = rule;
        states.delete(rule.id); // a changed rule starts over from the data (its firing state is kept in SQLite)
      } else rules.push(rule);
      loaded = { rules, errors: loaded.errors };
      save();
    },
    remove(id) {
      const rules = loaded.rules.filter((r) => r.id !== id);
      if (rules.length === loaded.rules.length) return false;
      const state = states.get(id);
      const rule = loaded.rules.find((r) => r.id === id)!;
      if (state?.firing) record(rule, "resolved", state.valueAtS ?? 0, state.value ?? 0);
      states.delete(id);
      loaded = { rules, errors: loaded.errors };
      save();
      return true;
    },
    evaluateNow,
    close,
    [Symbol.asyncDispose]: close,
  };
}

function mtimeOf(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return -1;
  }
}
