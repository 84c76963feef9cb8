/** Minimal assertions (no Deno std here: JSR is not reachable). */
export class AssertionError extends Error {
  override readonly name = "AssertionError";
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(message);
}

function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v) => typeof v === "bigint" ? `${v}n` : v);
}

export function assertEquals<T>(actual: T, expected: T, message = ""): void {
  if (canonical(actual) !== canonical(expected)) {
    throw new AssertionError(
      `${message ? message + ": " : ""}expected ${canonical(expected)}, got ${canonical(actual)}`,
    );
  }
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  check: (error: unknown) => boolean | void,
  message = "expected a rejection",
): Promise<void> {
  try {
    await fn();
  } catch (error) {
    if (check(error) === false) throw new AssertionError(`${message}: rejected with unexpected ${error}`);
    return;
  }
  throw new AssertionError(`${message}: it resolved`);
}
