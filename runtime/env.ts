/**
 * The environment reader every process validates its configuration with: every problem is collected and
 * reported at once, with the variable's name, so a bad deployment fails with one clear message.
 */
export type Env = Record<string, string | undefined>;

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
}

/** Reads variables with defaults, collecting problems instead of stopping at the first. */
export interface EnvReader {
  readonly problems: string[];
  string(name: string, fallback: string): string;
  integer(name: string, fallback: number, min: number, max: number): number;
  boolean(name: string, fallback: boolean): boolean;
  oneOf<T extends string>(name: string, fallback: T, allowed: readonly T[]): T;
  hostPort(name: string, fallback: string): string;
  url(name: string, fallback: string, protocols: readonly string[]): string;
  /** Throws a ConfigError listing every problem met so far. */
  done(): void;
}

export function createEnvReader(env: Env): EnvReader {
  const problems: string[] = [];
  const raw = (name: string) => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? undefined : value.trim();
  };
  return {
    problems,
    string(name: string, fallback: string): string {
      return raw(name) ?? fallback;
    },
    integer(name: string, fallback: number, min: number, max: number): number {
      const text = raw(name);
      if (text === undefined) return fallback;
      const value = Number(text);
      if (!/^-?\d+$/.test(text) || value < min || value > max) {
        problems.push(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
        return fallback;
      }
      return value;
    },
    boolean(name: string, fallback: boolean): boolean {
      const text = raw(name)?.toLowerCase();
      if (text === undefined) return fallback;
      if (["1", "true", "yes", "on"].includes(text)) return true;
      if (["0", "false", "no", "off"].includes(text)) return false;
      problems.push(`${name} must be true or false, got ${JSON.stringify(text)}`);
      return fallback;
    },
    oneOf<T extends string>(name: string, fallback: T, allowed: readonly T[]): T {
      const text = raw(name);
      if (text === undefined) return fallback;
      if (!(allowed as readonly string[]).includes(text)) {
        problems.push(`${name} must be one of ${allowed.join(", ")}, got ${JSON.stringify(text)}`);
        return fallback;
      }
      return text as T;
    },
    hostPort(name: string, fallback: string): string {
      const text = raw(name) ?? fallback;
      if (!/^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$/.test(text)) {
        problems.push(`${name} must be host:port, got ${JSON.stringify(text)}`);
      }
      return text;
    },
    url(name: string, fallback: string, protocols: readonly string[]): string {
      const text = raw(name) ?? fallback;
      for (const part of text.split(",")) {
        try {
          if (!protocols.includes(new URL(part).protocol)) throw new Error();
        } catch {
          problems.push(`${name} must be ${protocols.join(" or ")} URL(s), got ${JSON.stringify(text)}`);
          break;
        }
      }
      return text;
    },
    /** Throws a ConfigError listing every problem met so far. */
    done(): void {
      if (problems.length > 0) throw new ConfigError(problems);
    },
  };
}
