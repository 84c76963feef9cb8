/**
 * Access: on a loopback address with sign-in off, the local user is an admin and nothing else can reach the
 * server (requests whose Host is not a loopback name are refused, so a web page cannot rebind a domain to
 * it). Elsewhere every page needs a session: a sign-in form against configured users (PBKDF2-SHA256 hashes),
 * a random session id in an HttpOnly, SameSite=Strict cookie that expires, sign-out, roles readonly and
 * admin. Every change (alert rules, sign-out) needs a CSRF token that matches the session's (or, without a
 * session, a double-submit cookie's) and an Origin of this server.
 */
import type { Role, WebUser } from "./config.ts";

const encoder = new TextEncoder();
const ITERATIONS = 210_000;

function b64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function unb64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function pbkdf2(password: string, salt: Uint8Array, iterations: number): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey("raw", encoder.encode(password), "PBKDF2", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: salt as BufferSource, iterations },
    key,
    256,
  );
  return new Uint8Array(bits);
}

/** `pbkdf2-sha256$<iterations>$<salt>$<hash>` for WEB_USERS. */
export async function hashPassword(password: string, iterations = ITERATIONS): Promise<string> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  return `pbkdf2-sha256$${iterations}$${b64(salt)}$${b64(await pbkdf2(password, salt, iterations))}`;
}

export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < Math.max(a.length, b.length); i++) diff |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return diff === 0;
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, iterations, salt, hash] = stored.split("$");
  if (scheme !== "pbkdf2-sha256") return false;
  const expected = unb64(hash);
  return timingSafeEqual(await pbkdf2(password, unb64(salt), Number(iterations)), expected);
}

function randomToken(): string {
  return b64(crypto.getRandomValues(new Uint8Array(32))).replaceAll("+", "-").replaceAll("/", "_").replaceAll(
    "=",
    "",
  );
}

export interface Session {
  id: string;
  user: string;
  role: Role;
  csrf: string;
  expiresMs: number;
}

/** Who is asking: a signed-in user, the local admin (loopback without sign-in), or nobody. */
export interface Principal {
  user: string;
  role: Role;
  session?: Session;
}

export const SESSION_COOKIE = "tw_session";
export const CSRF_COOKIE = "tw_csrf";
const MAX_SESSIONS = 10_000;
const MAX_FAILURES = 10;
const FAILURE_WINDOW_MS = 5 * 60_000;

export function parseCookies(header: string | null): Map<string, string> {
  const cookies = new Map<string, string>();
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0) cookies.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  return cookies;
}

export interface Auth {
  readonly required: boolean;
  principal(request: Request): Principal | undefined;
  /** Checks the password; on success a new session (the caller sets its cookie). Undefined: wrong, or locked. */
  signIn(user: string, password: string): Promise<Session | "locked" | undefined>;
  signOut(request: Request): void;
  sessionCookie(session: Session): string;
  clearSessionCookie(): string;
  /** The CSRF token pages embed in forms, and the cookie to set when it is new (no session yet). */
  csrfFor(request: Request): { token: string; setCookie?: string };
  /** True when the form's token matches and the request comes from this server's own pages. */
  checkCsrf(request: Request, token: string | null): boolean;
  sessions(): number;
}

export function createAuth(options: {
  required: boolean;
  users: WebUser[];
  sessionTtlS: number;
  cookieSecure: boolean;
}): Auth {
  const sessions = new Map<string, Session>();
  const failures = new Map<string, number[]>();
  const secure = options.cookieSecure ? "; Secure" : "";
  // A fixed hash to check against when the user does not exist, so that the answer takes as long.
  let dummyHash: string | undefined;

  const sessionOf = (request: Request): Session | undefined => {
    const id = parseCookies(request.headers.get("cookie")).get(SESSION_COOKIE);
    if (!id) return undefined;
    const session = sessions.get(id);
    if (!session) return undefined;
    if (session.expiresMs < Date.now()) {
      sessions.delete(id);
      return undefined;
    }
    return session;
  };

  // Browsers send Origin (and Sec-Fetch-Site) on every POST: a form posted from another site is refused
  // even before its token is checked.
  const sameOrigin = (request: Request): boolean => {
    const site = request.headers.get("sec-fetch-site");
    if (site !== null && site !== "same-origin" && site !== "none") return false;
    const origin = request.headers.get("origin");
    if (origin === null) return true;
    try {
      return new URL(origin).host === (request.headers.get("host") ?? new URL(request.url).host);
    } catch {
      return false;
    }
  };

  return {
    required: options.required,
    principal(request) {
      const session = sessionOf(request);
      if (session) return { user: session.user, role: session.role, session };
      if (!options.required) return { user: "local", role: "admin" };
      return undefined;
    },
    async signIn(name, password) {
      const now = Date.now();
      const recent = (failures.get(name) ?? []).filter((t) => now - t < FAILURE_WINDOW_MS);
      if (recent.length >= MAX_FAILURES) return "locked";
      const user = options.users.find((u) => u.name === name);
      dummyHash ??= await hashPassword("not a password");
      const ok = await verifyPassword(password, user?.passwordHash ?? dummyHash) && user !== undefined;
      if (!ok) {
        recent.push(now);
        failures.set(name.slice(0, 64), recent);
        if (failures.size > 10_000) failures.delete(failures.keys().next().value!);
        return undefined;
      }
      failures.delete(name);
      for (const [id, s] of sessions) if (s.expiresMs < now) sessions.delete(id);
      while (sessions.size >= MAX_SESSIONS) sessions.delete(sessions.keys().next().value!);
      const session: Session = {
        id: randomToken(),
        user: user.name,
        role: user.role,
        csrf: randomToken(),
        expiresMs: now + options.sessionTtlS * 1000,
      };
      sessions.set(session.id, session);
      return session;
    },
    signOut(request) {
      const session = sessionOf(request);
      if (session) sessions.delete(session.id);
    },
    sessionCookie: (session) =>
      `${SESSION_COOKIE}=${session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${options.sessionTtlS}${secure}`,
    clearSessionCookie: () => `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0${secure}`,
    csrfFor(request) {
      const session = sessionOf(request);
      if (session) return { token: session.csrf };
      const existing = parseCookies(request.headers.get("cookie")).get(CSRF_COOKIE);
      if (existing && /^[A-Za-z0-9_-]{43}$/.test(existing)) return { token: existing };
      const token = randomToken();
      return {
        token,
        setCookie: `${CSRF_COOKIE}=${token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=86400${secure}`,
      };
    },
    checkCsrf(request, token) {
      if (!token || !sameOrigin(request)) return false;
      const session = sessionOf(request);
      const expected = session?.csrf ?? parseCookies(request.headers.get("cookie")).get(CSRF_COOKIE);
      if (!expected) return false;
      return timingSafeEqual(encoder.encode(token), encoder.encode(expected));
    },
    sessions: () => sessions.size,
  };
}
