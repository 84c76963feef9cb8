/**
 * Tailwatch web: `deno run -A web/main.ts [serve]` (the dashboard, until SIGTERM/SIGINT) or
 * `deno run -A web/main.ts hash-password` (reads a password on stdin, prints a hash for WEB_USERS).
 * Configuration comes from the environment (config.ts, README.md); a bad value exits with code 2.
 */
import { createLogger } from "@tailwatch/runtime";
import { hashPassword } from "./auth.ts";
import { ConfigError, loadWebConfig } from "./config.ts";
import { createWebServer } from "./server.ts";

export async function main(args: string[]): Promise<number> {
  const command = args[0] ?? "serve";
  if (command === "hash-password") {
    const text = new TextDecoder().decode(await new Response(Deno.stdin.readable).arrayBuffer()).replace(
      /\r?\n$/,
      "",
    );
    if (text === "") {
      console.error("hash-password: give the password on stdin");
      return 2;
    }
    console.log(await hashPassword(text));
    return 0;
  }
  if (command !== "serve") {
    console.error("usage: deno run -A web/main.ts [serve|hash-password]");
    return 2;
  }
  let config;
  try {
    config = loadWebConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`web: configuration error: ${error.message}`);
      return 2;
    }
    throw error;
  }
  const logger = createLogger(config.logLevel, { component: "web" });
  const server = await createWebServer(config, { logger });
  const port = await server.listen();
  logger.info("listening", {
    url: `http://${config.host.includes(":") ? `[${config.host}]` : config.host}:${port}/`,
    signIn: config.authRequired,
  });
  const stopped = new Promise<void>((resolve) => {
    for (const signal of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(signal, () => resolve());
  });
  await stopped;
  logger.info("stopping");
  await server.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
