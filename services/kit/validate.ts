/** Request validation shared by the services: each failure is an INVALID_ARGUMENT naming the field. */
import { Code, ServiceError } from "@tailwatch/grpc";

const ID = /^[A-Za-z0-9_-]{1,64}$/;

export function requireId(field: string, value: string): string {
  if (value === "") throw new ServiceError(Code.INVALID_ARGUMENT, `${field} is required`);
  if (!ID.test(value)) {
    throw new ServiceError(Code.INVALID_ARGUMENT, `${field} must be 1 to 64 letters, digits, "-" or "_"`);
  }
  return value;
}

export function requireText(field: string, value: string, maxLength: number): string {
  if (value.trim() === "") throw new ServiceError(Code.INVALID_ARGUMENT, `${field} is required`);
  if (value.length > maxLength) {
    throw new ServiceError(Code.INVALID_ARGUMENT, `${field} must be at most ${maxLength} characters`);
  }
  return value;
}

export function requireRange(field: string, value: number | bigint, min: number, max: number): number {
  const n = Number(value);
  if (!(n >= min && n <= max)) {
    throw new ServiceError(Code.INVALID_ARGUMENT, `${field} must be from ${min} to ${max}`);
  }
  return n;
}

export function requireCurrency(field: string, value: string): string {
  if (!/^[A-Z]{3}$/.test(value)) {
    throw new ServiceError(Code.INVALID_ARGUMENT, `${field} must be a 3-letter ISO 4217 code such as "EUR"`);
  }
  return value;
}

/** page_size: 0 means `fallback`; otherwise 1 to `max`. */
export function pageSize(value: number, fallback = 20, max = 100): number {
  if (value === 0) return fallback;
  return requireRange("page_size", value, 1, max);
}

/** Opaque page tokens: the position to resume from, base64url-encoded. */
export function encodePageToken(position: string): string {
  return btoa(JSON.stringify({ after: position })).replaceAll("+", "-").replaceAll("/", "_").replaceAll(
    "=",
    "",
  );
}

export function decodePageToken(token: string): string | undefined {
  if (token === "") return undefined;
  try {
    const parsed = JSON.parse(atob(token.replaceAll("-", "+").replaceAll("_", "/")));
    if (typeof parsed?.after === "string") return parsed.after;
  } catch {
    // fall through to the error below
  }
  throw new ServiceError(Code.INVALID_ARGUMENT, "page_token is not a token this service returned");
}
