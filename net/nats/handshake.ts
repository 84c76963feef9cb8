/**
 * Opening a connection to one NATS server: TCP, the server's INFO, TLS when either side wants it, CONNECT
 * with the credentials (user and password, a token, or a `.creds` file's JWT and signed nonce), and the PONG
 * that says the server took it, all within one deadline.
 */
import { credentialsConnectFields, currentCredentials } from "./nkeys.ts";
import {
  LineReader,
  natsErrorText,
  type NatsServerAddress,
  type NatsServerInfo,
  parseInfo,
  PONG,
} from "./protocol.ts";

const encoder = new TextEncoder();

/** The server answered CONNECT with -ERR (bad credentials, a user it does not know). */
export class RefusedError extends Error {
  constructor(readonly text: string) {
    super(`the server refused the connection: ${text.slice(0, 200)}`);
  }
}

/** Who connects: the name sent in CONNECT, and who is told when a server refuses the connection. */
export interface HandshakeOwner {
  readonly name: string;
  onServerError?(text: string): void;
}

/** A connection whose handshake is done. */
export interface Handshaken {
  conn: Deno.Conn;
  /** The server's latest INFO before its PONG. */
  info: NatsServerInfo;
  /** Bytes read after the PONG: the first protocol messages, for the reader to parse before anything else. */
  leftover: Uint8Array;
}

/** The connection being set up, as the deadline sees it: whatever `conn` is when it passes is closed. */
interface Attempt {
  conn: Deno.Conn | undefined;
  timedOut: boolean;
}

/**
 * Connects to `server` and does the handshake: INFO, (TLS), CONNECT + PING, PONG, within `timeoutMs`. INFO
 * updates before the PONG are taken in; whatever follows the PONG in the same read is kept (`leftover`).
 * Promises: on success the connection is open and nothing of it is lost; on failure it is closed, and a
 * refusal (-ERR) is told to `owner.onServerError` and thrown as a `RefusedError`.
 */
export async function handshake(
  server: NatsServerAddress,
  owner: HandshakeOwner,
  timeoutMs: number,
): Promise<Handshaken> {
  const attempt: Attempt = { conn: undefined, timedOut: false };
  const timer = setTimeout(() => {
    attempt.timedOut = true;
    closeQuietly(attempt.conn);
  }, timeoutMs);
  try {
    attempt.conn = await dial(server, attempt, timeoutMs);
    const lines = new LineReader();
    let info = await readInfo(lines, attempt.conn);
    const tls = server.tls || info.tls_required === true;
    if (tls) {
      attempt.conn = await Deno.startTls(attempt.conn as Deno.TcpConn, {
        hostname: server.tlsName ?? server.hostname,
      });
    }
    const connectOptions = await connectFields(server, info, tls, owner.name);
    const hello = encoder.encode(`CONNECT ${JSON.stringify(connectOptions)}\r\nPING\r\n`);
    let written = 0;
    while (written < hello.length) written += await attempt.conn.write(hello.subarray(written));
    info = await awaitPong(lines, attempt.conn, info);
    clearTimeout(timer);
    return { conn: attempt.conn, info, leftover: lines.rest() };
  } catch (error) {
    clearTimeout(timer);
    closeQuietly(attempt.conn);
    const refused = refusalIn(error);
    if (refused) {
      owner.onServerError?.(refused.text);
      throw refused;
    }
    if (attempt.timedOut) throw new Error(`no answer within ${timeoutMs} ms (${error})`);
    throw error;
  }
}

/**
 * Opens the TCP connection. A connect that never completes (a host that drops packets) fails once the
 * deadline has passed (`attempt.timedOut`), and the connection, should it come later, is closed.
 */
function dial(server: NatsServerAddress, attempt: Attempt, timeoutMs: number): Promise<Deno.Conn> {
  const connecting = Deno.connect({ hostname: server.hostname, port: server.port });
  const late = connecting.then((conn) => {
    if (attempt.timedOut) conn.close();
    return conn;
  });
  return Promise.race([
    late,
    new Promise<never>((_, reject) => {
      const check = setInterval(() => {
        if (attempt.timedOut) {
          clearInterval(check);
          reject(new Error(`no connection within ${timeoutMs} ms`));
        }
      }, 50);
      late.finally(() => clearInterval(check)).catch(() => {});
    }),
  ]);
}

/** The server's first line: its INFO, which must be JSON and must not refuse headers. */
async function readInfo(lines: LineReader, conn: Deno.Conn): Promise<NatsServerInfo> {
  const first = await lines.next(conn, "INFO");
  if (!first.startsWith("INFO ")) throw new Error(`expected INFO, got ${first.slice(0, 100)}`);
  const info = parseInfo(first);
  if (info === undefined) throw new Error("the server's INFO is not JSON");
  if (info.headers === false) throw new Error("the server does not support headers");
  return info;
}

/**
 * CONNECT's options: headers and no-responders on, the connection's name, and the server's credentials (a
 * `.creds` file is read again now, and the server's nonce signed with its seed).
 */
async function connectFields(
  server: NatsServerAddress,
  info: NatsServerInfo,
  tls: boolean,
  name: string,
): Promise<Record<string, unknown>> {
  const connectOptions: Record<string, unknown> = {
    verbose: false,
    pedantic: false,
    headers: true,
    no_responders: true,
    protocol: 1,
    lang: "deno-tailwatch",
    version: "1",
    name,
    tls_required: tls,
  };
  if (server.user !== undefined) connectOptions.user = server.user;
  if (server.pass !== undefined) connectOptions.pass = server.pass;
  if (server.token !== undefined) connectOptions.auth_token = server.token;
  if (server.creds !== undefined) {
    Object.assign(
      connectOptions,
      await credentialsConnectFields(currentCredentials(server.creds), info.nonce),
    );
  }
  return connectOptions;
}

/**
 * Reads up to the PONG that answers CONNECT's PING; a -ERR before it (bad credentials) is thrown as a
 * `RefusedError`. INFO updates before it are taken in (the latest is returned); a PING is answered.
 */
async function awaitPong(lines: LineReader, conn: Deno.Conn, info: NatsServerInfo): Promise<NatsServerInfo> {
  for (;;) {
    const line = await lines.next(conn, "PONG");
    if (line === "PONG") return info;
    if (line.startsWith("-ERR")) throw new RefusedError(natsErrorText(line));
    if (line.startsWith("INFO ")) info = parseInfo(line) ?? info;
    else if (line === "PING") await conn.write(PONG);
  }
}

/**
 * The refusal a failed handshake carries: a `RefusedError`, or a -ERR the server closed the connection right
 * after ("connection closed waiting for PONG: -ERR ..."); undefined for any other failure.
 */
function refusalIn(error: unknown): RefusedError | undefined {
  if (error instanceof RefusedError) return error;
  const closedWith = /-ERR[^\r\n]*/.exec(String(error));
  return closedWith ? new RefusedError(natsErrorText(closedWith[0])) : undefined;
}

function closeQuietly(conn: Deno.Conn | undefined): void {
  try {
    conn?.close();
  } catch {
    // closed
  }
}
