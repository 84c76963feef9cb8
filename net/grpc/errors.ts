/** gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

/**
 * The one HTTP status per gRPC code, used by the REST shim in both directions (the same table as
 * grpc-gateway and Google's API design guide).
 */
const HTTP_STATUS_BY_CODE: Record<Code, number> = {
  [Code.OK]: 200,
  [Code.CANCELLED]: 499,
  [Code.UNKNOWN]: 500,
  [Code.INVALID_ARGUMENT]: 400,
  [Code.DEADLINE_EXCEEDED]: 504,
  [Code.NOT_FOUND]: 404,
  [Code.ALREADY_EXISTS]: 409,
  [Code.PERMISSION_DENIED]: 403,
  [Code.RESOURCE_EXHAUSTED]: 429,
  [Code.FAILED_PRECONDITION]: 400,
  [Code.ABORTED]: 409,
  [Code.OUT_OF_RANGE]: 400,
  [Code.UNIMPLEMENTED]: 501,
  [Code.INTERNAL]: 500,
  [Code.UNAVAILABLE]: 503,
  [Code.DATA_LOSS]: 500,
  [Code.UNAUTHENTICATED]: 401,
};

export function httpStatusFromCode(code: Code): number {
  return HTTP_STATUS_BY_CODE[code] ?? 500;
}

/** The code's canonical name, e.g. "NOT_FOUND". */
export function codeName(code: Code): string {
  return Code[code] ?? "UNKNOWN";
}

function isCode(value: unknown): value is Code {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= 16;
}

/**
 * The one error type of the services: a gRPC code and a message a person understands. Handlers throw it;
 * every boundary (gRPC, REST, client calls) turns whatever was thrown into one with `ServiceError.from`.
 */
export class ServiceError extends Error {
  override readonly name = "ServiceError";
  readonly code: Code;
  /** Extra seconds a client should wait before retrying (sent as Retry-After on REST). */
  readonly retryAfterSeconds?: number;

  constructor(code: Code, message: string, options: { cause?: unknown; retryAfterSeconds?: number } = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }

  /**
   * Normalizes anything thrown: a ServiceError as is; an error from a grpc-js client call keeps its code and
   * details; anything else becomes INTERNAL (or `fallback`) with its message.
   */
  static from(reason: unknown, fallback: Code = Code.INTERNAL): ServiceError {
    if (reason instanceof ServiceError) return reason;
    if (reason instanceof Error) {
      const grpcCode = (reason as Error & { code?: unknown }).code;
      const details = (reason as Error & { details?: unknown }).details;
      if (isCode(grpcCode) && grpcCode !== Code.OK) {
        return new ServiceError(grpcCode, typeof details === "string" ? details : reason.message, {
          cause: reason,
        });
      }
      if (reason.name === "AbortError" || reason.name === "TimeoutError") {
        return new ServiceError(Code.DEADLINE_EXCEEDED, "deadline exceeded", { cause: reason });
      }
      return new ServiceError(fallback, reason.message, { cause: reason });
    }
    return new ServiceError(fallback, String(reason));
  }
}
