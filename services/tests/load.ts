/** A bounded closed-loop load generator for tests: `total` calls, at most `concurrency` at once. */
import { Code, ServiceError } from "@tailwatch/grpc";

export interface LoadResult {
  ok: number;
  /** Count per gRPC code name of the failed calls. */
  errors: Map<Code, number>;
  elapsedMs: number;
}

export async function runLoad(
  total: number,
  concurrency: number,
  call: (i: number) => Promise<unknown>,
  options: { stopOn?: (error: ServiceError) => boolean } = {},
): Promise<LoadResult> {
  const started = performance.now();
  const result: LoadResult = { ok: 0, errors: new Map(), elapsedMs: 0 };
  let next = 0;
  let stopped = false;
  const worker = async () => {
    while (!stopped && next < total) {
      const i = next++;
      try {
        await call(i);
        result.ok++;
      } catch (reason) {
        const error = ServiceError.from(reason);
        result.errors.set(error.code, (result.errors.get(error.code) ?? 0) + 1);
        if (options.stopOn?.(error)) stopped = true;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  result.elapsedMs = performance.now() - started;
  return result;
}
