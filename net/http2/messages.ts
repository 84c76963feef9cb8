/**
 * The checks of a well-formed message (RFC 9113 8.2, 8.3): what a header list must and must not hold. Pure
 * functions of a decoded list (name, value, name, value...); headers.ts answers what they find with a stream
 * error (PROTOCOL_ERROR).
 */

const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
const REQUEST_PSEUDO = new Set([":method", ":scheme", ":authority", ":path"]);

/** The answer to a header list over the limit. */
export const HEADER_LIST_TOO_LARGE = [":status", "431"];

function hasUpperCase(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 65 && c <= 90) return true;
  }
  return false;
}

/** Why a request's header list is malformed (RFC 9113 8.2, 8.3.1), or undefined when it is fine. */
export function requestProblem(fields: string[]): string | undefined {
  let regularSeen = false;
  let method: string | undefined;
  let scheme: string | undefined;
  let path: string | undefined;
  let authority: string | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    const value = fields[i + 1];
    if (hasUpperCase(name)) return `upper-case header name ${name}`;
    if (name.charCodeAt(0) === 58 /* : */) {
      if (regularSeen) return `pseudo-header ${name} after a regular header`;
      if (!REQUEST_PSEUDO.has(name)) return `pseudo-header ${name} is not a request's`;
      if (name === ":method") {
        if (method !== undefined) return "two :method";
        method = value;
      } else if (name === ":scheme") {
        if (scheme !== undefined) return "two :scheme";
        scheme = value;
      } else if (name === ":path") {
        if (path !== undefined) return "two :path";
        path = value;
      } else {
        if (authority !== undefined) return "two :authority";
        authority = value;
      }
    } else {
      regularSeen = true;
      if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
      if (name === "te" && value !== "trailers") return `te: ${value}`;
    }
  }
  if (method === undefined || method === "") return "no :method";
  if (method === "CONNECT") return authority ? undefined : "CONNECT without :authority";
  if (scheme === undefined || scheme === "") return "no :scheme";
  if (path === undefined || path === "") return "no :path";
  return undefined;
}

/** Why a response's header list (or any trailers) is malformed, or undefined when it is fine. */
export function responseProblem(fields: string[], trailers: boolean): string | undefined {
  let regularSeen = false;
  let status: string | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i];
    if (hasUpperCase(name)) return `upper-case header name ${name}`;
    if (name.charCodeAt(0) === 58) {
      if (trailers) return `pseudo-header ${name} in trailers`;
      if (regularSeen) return `pseudo-header ${name} after a regular header`;
      if (name !== ":status" || status !== undefined) return `unexpected pseudo-header ${name}`;
      status = fields[i + 1];
    } else {
      regularSeen = true;
      if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
    }
  }
  if (!trailers && !/^\d{3}$/.test(status ?? "")) return `bad :status ${status}`;
  return undefined;
}

/** A request's content-length, -1 when it has none; NaN when it is not a number. */
export function contentLength(fields: string[]): number {
  for (let i = 0; i < fields.length; i += 2) {
    if (fields[i] === "content-length") return /^\d{1,15}$/.test(fields[i + 1]) ? Number(fields[i + 1]) : NaN;
  }
  return -1;
}
