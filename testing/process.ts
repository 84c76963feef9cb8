/** A child process whose output is kept in a log file, stopped by `await using`. */
export interface ManagedProcess extends AsyncDisposable {
  readonly pid: number;
  readonly logPath: string;
  /** Sends a signal and waits for the exit; returns the exit code (or 128 + signal number). */
  stop(signal?: Deno.Signal, timeoutMs?: number): Promise<number>;
  /** Resolves with the exit status when the process ends by itself or is stopped. */
  readonly status: Promise<Deno.CommandStatus>;
  log(): Promise<string>;
}

/** Starts `cmd args` with stdout and stderr appended to `logPath`. */
export async function spawnLogged(
  cmd: string,
  args: string[],
  logPath: string,
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<ManagedProcess> {
  const logFile = await Deno.open(logPath, { create: true, append: true });
  const child = new Deno.Command(cmd, {
    args,
    env: options.env,
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Both streams go to one file; pipeTo would lock its writable, so each chunk is written as it comes.
  const copy = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      let written = 0;
      while (written < chunk.byteLength) written += await logFile.write(chunk.subarray(written));
    }
  };
  const pumps = Promise.all([copy(child.stdout), copy(child.stderr)]).catch(() => {});
  const status = child.status.then(async (status) => {
    await pumps;
    try {
      logFile.close();
    } catch {
      // already closed
    }
    return status;
  });
  let exited = false;
  status.then(() => exited = true);

  const stop = async (signal: Deno.Signal = "SIGTERM", timeoutMs = 15_000): Promise<number> => {
    if (!exited) {
      try {
        child.kill(signal);
      } catch {
        // it may have exited between the check and the kill
      }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // gone
        }
      }, timeoutMs);
      await status;
      clearTimeout(timer);
    }
    const { code } = await status;
    return code;
  };
  return {
    pid: child.pid,
    logPath,
    status,
    stop,
    log: () => Deno.readTextFile(logPath).catch(() => ""),
    async [Symbol.asyncDispose]() {
      await stop("SIGTERM");
    },
  };
}
