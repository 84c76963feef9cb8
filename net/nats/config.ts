/**
 * How every process reaches NATS: the servers, the credentials and the inbox prefix, read from the environment
 * once at start (validated with the rest of the configuration), and handed to both clients from there: the
 * kit's wire client (`wireServers`) and nats.js (`natsJsOptions`, `connectNats`).
 *
 * Why credentials are options and not only part of the URL: nats.js 3 ignores `user:pass@` in a server URL
 * (checked against nats-server 2.15.3: `nats://user:pass@host` alone is an Authorization Violation), so a
 * URL's credentials are taken out of it here and passed as options to both clients. They may be given either
 * way, once: NATS_USER and NATS_PASSWORD (or NATS_TOKEN), or in NATS_URL.
 *
 * Why a per-user inbox prefix: replies (JetStream acks, API answers, pull deliveries) come to the client's
 * inbox subjects, and a user allowed to subscribe to `_INBOX.>` could read replies meant for another user.
 * With a user the prefix is `_INBOX_<user>`, so deploy/nats/auth.conf lets each user subscribe to its own
 * inboxes only.
 *
 * A `.creds` file (NATS_CREDS: a user JWT and its nkey seed, as `nsc` writes them for a server in operator mode)
 * replaces user and password: the wire client signs the server's nonce with the seed (nkeys.ts) and nats.js
 * gets `credsAuthenticator`. The file is read again at every connection (a renewed JWT is picked up without a
 * restart); when a later read fails, what it held at start is used.
 */
import {
  connect,
  type ConnectionOptions,
  credsAuthenticator,
  type NatsConnection,
} from "@nats-io/transport-node";
import { ConfigError, createEnvReader, type Env, type EnvReader, type Logger } from "@tailwatch/runtime";
import { currentCredentials, type NatsCredsFile, parseCredentials } from "./nkeys.ts";
import { type NatsServerAddress, parseNatsUrl } from "./protocol.ts";

/** user and password, or a token, or a `.creds` file, or nothing (a server without authorization). */
export interface NatsAuth {
  user?: string;
  pass?: string;
  token?: string;
  creds?: NatsCredsFile;
}

export interface NatsConfig extends NatsAuth {
  /** NATS_URL without credentials: `nats://host:port` or `tls://host:port` (TLS as the scheme or the server says). */
  servers: string[];
  /**
   * NATS_INBOX_PREFIX: the first token(s) of this client's reply subjects. Default `_INBOX_<user>` with a user
   * (a name of letters, digits, `_` and `-`; with a `.creds` file, the user JWT's name), else `_INBOX`.
   */
  inboxPrefix: string;
}

const SUBJECT_TOKENS = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const PLAIN_NAME = /^[A-Za-z0-9_-]+$/;

/** The default inbox prefix of a user (or of none). */
export function defaultInboxPrefix(user: string | undefined): string {
  return user !== undefined && PLAIN_NAME.test(user) ? `_INBOX_${user}` : "_INBOX";
}

/**
 * Reads NATS_URL (comma-separated `nats://` or `tls://` URLs, credentials allowed in them), NATS_USER and
 * NATS_PASSWORD or NATS_TOKEN, and NATS_INBOX_PREFIX with `read`; problems go to `read.problems`.
 */
export function readNatsConfig(read: EnvReader, fallbackUrl = "nats://127.0.0.1:4222"): NatsConfig {
  const text = read.url("NATS_URL", fallbackUrl, ["nats:", "tls:"]);
  const servers: string[] = [];
  const fromUrls: NatsAuth[] = [];
  for (const part of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    let address: NatsServerAddress;
    try {
      address = parseNatsUrl(part);
    } catch {
      continue; // read.url reported it
    }
    const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
    servers.push(`${address.tls ? "tls" : "nats"}://${host}:${address.port}`);
    if (address.user !== undefined || address.token !== undefined) {
      fromUrls.push({ user: address.user, pass: address.pass, token: address.token });
    }
  }
  const same = (a: NatsAuth, b: NatsAuth) => a.user === b.user && a.pass === b.pass && a.token === b.token;
  if (fromUrls.some((auth) => !same(auth, fromUrls[0]))) {
    read.problems.push("NATS_URL: the servers carry different credentials; give them once (NATS_USER, ...)");
  }
  const user = read.string("NATS_USER", "") || undefined;
  const pass = read.string("NATS_PASSWORD", "") || undefined;
  const token = read.string("NATS_TOKEN", "") || undefined;
  let auth: NatsAuth = {};
  if (user !== undefined || pass !== undefined || token !== undefined) {
    if (fromUrls.length > 0) {
      read.problems.push(
        "NATS credentials given twice: in NATS_URL and in NATS_USER/NATS_PASSWORD/NATS_TOKEN",
      );
    }
    if (token !== undefined && (user !== undefined || pass !== undefined)) {
      read.problems.push("NATS_TOKEN and NATS_USER/NATS_PASSWORD exclude each other");
    } else if (user !== undefined && pass === undefined) {
      read.problems.push("NATS_USER is set without NATS_PASSWORD");
    } else if (pass !== undefined && user === undefined) {
      read.problems.push("NATS_PASSWORD is set without NATS_USER");
    }
    auth = token !== undefined ? { token } : { user, pass };
  } else if (fromUrls.length > 0) {
    auth = fromUrls[0];
    if (auth.user !== undefined && auth.pass === undefined && auth.token === undefined) {
      read.problems.push("NATS_URL: a user without a password");
    }
  }
  const creds = readCredsFile(read);
  if (creds !== undefined && (auth.user !== undefined || auth.token !== undefined)) {
    read.problems.push("NATS_CREDS excludes NATS_USER/NATS_PASSWORD, NATS_TOKEN and credentials in NATS_URL");
  }
  const inboxPrefix = read.string(
    "NATS_INBOX_PREFIX",
    defaultInboxPrefix(creds !== undefined ? creds.initial.name : auth.user),
  );
  if (!SUBJECT_TOKENS.test(inboxPrefix)) {
    read.problems.push(
      `NATS_INBOX_PREFIX must be subject tokens of letters, digits, _ and - (no wildcards), got ${
        JSON.stringify(inboxPrefix)
      }`,
    );
  }
  return {
    servers,
    ...(auth.user !== undefined ? { user: auth.user } : {}),
    ...(auth.pass !== undefined ? { pass: auth.pass } : {}),
    ...(auth.token !== undefined ? { token: auth.token } : {}),
    ...(creds !== undefined ? { creds } : {}),
    inboxPrefix,
  };
}

/** NATS_CREDS: a readable `.creds` file holding a user JWT and a user seed (checked now, not at connect). */
function readCredsFile(read: EnvReader): NatsCredsFile | undefined {
  const path = read.string("NATS_CREDS", "");
  if (path === "") return undefined;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (error) {
    read.problems.push(`NATS_CREDS: cannot read ${path} (${error instanceof Error ? error.message : error})`);
    return undefined;
  }
  try {
    return { path, initial: parseCredentials(text) };
  } catch (error) {
    read.problems.push(`NATS_CREDS: ${path}: ${error instanceof Error ? error.message : error}`);
    return undefined;
  }
}

/**
 * The NATS configuration of `env` (NATS_URL, NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, NATS_INBOX_PREFIX); throws a
 * ConfigError naming every problem. `natsConfig({ NATS_URL: url })` for a URL (with or without credentials).
 */
export function natsConfig(env: Env | string): NatsConfig {
  const read = createEnvReader(typeof env === "string" ? { NATS_URL: env } : env);
  const config = readNatsConfig(read);
  read.done();
  return config;
}

/** The servers for the kit's wire client, each with the credentials. */
export function wireServers(config: NatsConfig): NatsServerAddress[] {
  return config.servers.map((url) => ({
    ...parseNatsUrl(url),
    ...(config.user !== undefined ? { user: config.user } : {}),
    ...(config.pass !== undefined ? { pass: config.pass } : {}),
    ...(config.token !== undefined ? { token: config.token } : {}),
    ...(config.creds !== undefined ? { creds: config.creds } : {}),
  }));
}

/**
 * nats.js connection options: servers, credentials, inbox prefix. A `.creds` file becomes nats.js's
 * `credsAuthenticator`, reading the file again at each connection as the wire client does.
 */
export function natsJsOptions(config: NatsConfig): ConnectionOptions {
  const creds = config.creds;
  return {
    servers: config.servers,
    inboxPrefix: config.inboxPrefix,
    ...(config.user !== undefined ? { user: config.user } : {}),
    ...(config.pass !== undefined ? { pass: config.pass } : {}),
    ...(config.token !== undefined ? { token: config.token } : {}),
    ...(creds !== undefined
      ? { authenticator: credsAuthenticator(() => credsFileText(currentCredentials(creds))) }
      : {}),
  };
}

/** A `.creds` file's text for `credentials` (what nats.js's credsAuthenticator parses). */
function credsFileText(credentials: { jwt: string; seed: string }): Uint8Array {
  return new TextEncoder().encode(
    `-----BEGIN NATS USER JWT-----\n${credentials.jwt}\n------END NATS USER JWT------\n\n` +
      `-----BEGIN USER NKEY SEED-----\n${credentials.seed}\n------END USER NKEY SEED------\n`,
  );
}

/** The servers as a log may show them (never credentials) */
export function describeNats(config: NatsConfig): string {
  const who = config.user !== undefined
    ? ` as ${config.user}`
    : config.token !== undefined
    ? " with a token"
    : config.creds !== undefined
    ? ` with ${config.creds.path}${config.creds.initial.name ? ` (${config.creds.initial.name})` : ""}`
    : "";
  return `${config.servers.join(",")}${who}`;
}

let guarded = false;
let guardLogger: Logger | undefined;

/**
 * nats.js leaks a socket error when a server refuses a connection: after the server's `-ERR 'Authorization
 * Violation'` it closes its socket and removes the socket's listeners, and the reset that follows (`read
 * ECONNRESET`) reaches an emitter without an error listener, which Deno turns into an uncaught error that ends
 * the process (reproduced here with nats.js 3.4 against nats-server 2.15.3, about one connection in two). Such
 * an error has no owner left to tell, so it is logged and dropped: only a socket's own read or write reset
 * (`code` ECONNRESET or EPIPE with a `syscall`), never any other error.
 */
export function guardNatsSocketErrors(logger?: Logger): void {
  if (logger !== undefined) guardLogger = logger;
  if (guarded) return;
  guarded = true;
  globalThis.addEventListener("error", (event) => {
    const error = event.error as { code?: unknown; syscall?: unknown; message?: unknown } | undefined;
    if (
      error && typeof error === "object" && (error.code === "ECONNRESET" || error.code === "EPIPE") &&
      (error.syscall === "read" || error.syscall === "write")
    ) {
      event.preventDefault();
      const fields = { error: String(error.message), code: error.code };
      if (guardLogger) guardLogger.warn("nats: a closed connection's socket error ignored", fields);
      else {
        console.error(JSON.stringify({
          time: new Date().toISOString(),
          level: "warn",
          msg: "nats: a closed connection's socket error ignored",
          ...fields,
        }));
      }
    }
  });
}

/**
 * Connects nats.js with `config` (servers, credentials, inbox prefix) and `options` on top. A refusal (bad
 * credentials, a server not there) rejects; it never crashes the process (guardNatsSocketErrors).
 */
export function connectNats(
  config: NatsConfig,
  options: Partial<ConnectionOptions> = {},
  logger?: Logger,
): Promise<NatsConnection> {
  guardNatsSocketErrors(logger);
  return connect({ ...natsJsOptions(config), ...options });
}

export { ConfigError, type NatsCredsFile };
