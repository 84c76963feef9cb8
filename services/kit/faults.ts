/**
 * Fault injection: added latency (fixed, uniform, or log-normal given median and p99) and an error rate, set
 * at start from the environment and at run time through the admin service.
 */
import { create } from "@bufbuild/protobuf";
import { type Faults, FaultsSchema } from "@tailwatch/proto/admin/v1";
import { Code, ServiceError } from "@tailwatch/grpc";

export type { Faults };

/** z such that P(Z <= z) = 0.99 for a standard normal Z. */
const Z_99 = 2.3263478740408408;

export const NO_FAULTS: Faults = create(FaultsSchema, {});

const finiteNonNegative = (value: number) => Number.isFinite(value) && value >= 0;
const MAX_DELAY_MS = 60_000;

/** Throws INVALID_ARGUMENT with a precise message when the configuration makes no sense. */
export function validateFaults(faults: Faults): Faults {
  const bad = (message: string) => new ServiceError(Code.INVALID_ARGUMENT, `invalid faults: ${message}`);
  const latency = faults.latency;
  switch (latency.case) {
    case "fixed":
      if (!finiteNonNegative(latency.value.delayMs) || latency.value.delayMs > MAX_DELAY_MS) {
        throw bad(`fixed.delay_ms must be in [0, ${MAX_DELAY_MS}]`);
      }
      break;
    case "uniform": {
      const { minMs, maxMs } = latency.value;
      if (!finiteNonNegative(minMs) || !finiteNonNegative(maxMs) || minMs > maxMs || maxMs > MAX_DELAY_MS) {
        throw bad(`uniform needs 0 <= min_ms <= max_ms <= ${MAX_DELAY_MS}`);
      }
      break;
    }
    case "lognormal": {
      const { medianMs, p99Ms } = latency.value;
      if (!(medianMs > 0) || !(p99Ms > medianMs) || !Number.isFinite(p99Ms) || p99Ms > MAX_DELAY_MS) {
        throw bad(`lognormal needs 0 < median_ms < p99_ms <= ${MAX_DELAY_MS}`);
      }
      break;
    }
    case undefined:
      break;
  }
  if (!(faults.errorRate >= 0 && faults.errorRate <= 1)) throw bad("error_rate must be in [0, 1]");
  if (faults.errorCode > 16) throw bad("error_code must be a gRPC code from 1 to 16 (0 = UNAVAILABLE)");
  return faults;
}

function standardNormal(random: () => number): number {
  // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
  const u = 1 - random();
  const v = random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Draws the latency to add, in milliseconds (0 when none is configured). */
export function sampleDelayMs(faults: Faults, random: () => number = Math.random): number {
  const latency = faults.latency;
  switch (latency.case) {
    case "fixed":
      return latency.value.delayMs;
    case "uniform":
      return latency.value.minMs + (latency.value.maxMs - latency.value.minMs) * random();
    case "lognormal": {
      const mu = Math.log(latency.value.medianMs);
      const sigma = (Math.log(latency.value.p99Ms) - mu) / Z_99;
      return Math.min(MAX_DELAY_MS, Math.exp(mu + sigma * standardNormal(random)));
    }
    default:
      return 0;
  }
}

/** The error to inject for this request, or undefined. */
export function sampleError(faults: Faults, random: () => number = Math.random): ServiceError | undefined {
  if (faults.errorRate <= 0 || random() >= faults.errorRate) return undefined;
  const code = faults.errorCode === 0 ? Code.UNAVAILABLE : faults.errorCode as Code;
  return new ServiceError(code, "injected fault");
}

/**
 * Parses the environment form: FAULT_LATENCY is "none", "fixed:<ms>", "uniform:<min_ms>,<max_ms>" or
 * "lognormal:<median_ms>,<p99_ms>"; FAULT_ERROR_RATE a probability; FAULT_ERROR_CODE a gRPC code.
 */
export function parseFaults(latency: string, errorRate: string, errorCode: string): Faults {
  const [kind, args = ""] = latency.trim().split(":", 2);
  const numbers = args.split(",").filter((s) => s.trim() !== "").map(Number);
  const faults = create(FaultsSchema, { errorRate: Number(errorRate), errorCode: Number(errorCode) });
  const need = (count: number, form: string) => {
    if (numbers.length !== count || numbers.some((n) => !Number.isFinite(n))) {
      throw new Error(`FAULT_LATENCY must look like "${form}", got ${JSON.stringify(latency)}`);
    }
  };
  switch (kind) {
    case "":
    case "none":
      break;
    case "fixed":
      need(1, "fixed:<ms>");
      faults.latency = { case: "fixed", value: { $typeName: "admin.v1.FixedLatency", delayMs: numbers[0] } };
      break;
    case "uniform":
      need(2, "uniform:<min_ms>,<max_ms>");
      faults.latency = {
        case: "uniform",
        value: { $typeName: "admin.v1.UniformLatency", minMs: numbers[0], maxMs: numbers[1] },
      };
      break;
    case "lognormal":
      need(2, "lognormal:<median_ms>,<p99_ms>");
      faults.latency = {
        case: "lognormal",
        value: { $typeName: "admin.v1.LognormalLatency", medianMs: numbers[0], p99Ms: numbers[1] },
      };
      break;
    default:
      throw new Error(
        `FAULT_LATENCY kind must be none, fixed, uniform or lognormal, got ${JSON.stringify(kind)}`,
      );
  }
  if (!Number.isInteger(faults.errorCode)) {
    throw new Error("FAULT_ERROR_CODE must be an integer from 0 to 16");
  }
  try {
    return validateFaults(faults);
  } catch (error) {
    throw new Error((error as Error).message);
  }
}
