/**
 * Writes deploy/compose/.env from .env.example with random secrets, and a web user `admin` whose password it
 * prints once: `deno run -A deploy/compose/make_env.ts [--force]`. Refuses to overwrite an existing .env
 * without --force. The web user's hash comes from the web app's own `hash-password` command.
 */
const HERE = new URL(".", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;

/** 32 hex digits from the system's CSPRNG (letters and digits only: they go into nats:// URLs). */
export function randomSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The example's text with every empty `NAME=` (or `NAME=''`) given a value; other lines as they are. */
export function fillEnv(example: string, values: (name: string) => string): string {
  return example.split("\n").map((line) => {
    const m = /^([A-Z][A-Z0-9_]*)=(''|)$/.exec(line);
    return m ? `${m[1]}=${values(m[1])}` : line;
  }).join("\n");
}

if (import.meta.main) {
  const target = `${HERE}.env`;
  const exists = await Deno.stat(target).then(() => true, () => false);
  if (exists && !Deno.args.includes("--force")) {
    console.error(`${target} exists; --force replaces it (and every secret in it)`);
    Deno.exit(1);
  }
  const webPassword = randomSecret();
  const hash = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}web/main.ts`, "hash-password"],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = hash.stdin.getWriter();
  await writer.write(new TextEncoder().encode(webPassword));
  await writer.close();
  const out = await hash.output();
  if (!out.success) {
    console.error("web/main.ts hash-password failed");
    Deno.exit(1);
  }
  const webHash = new TextDecoder().decode(out.stdout).trim();
  const text = fillEnv(
    await Deno.readTextFile(`${HERE}.env.example`),
    (name) => (name === "WEB_USERS" ? `'admin:admin:${webHash}'` : randomSecret()),
  );
  await Deno.writeTextFile(target, text, { mode: 0o600 });
  console.log(`wrote ${target} (mode 600). Web sign-in: admin / ${webPassword}; Grafana: admin / see .env`);
}
