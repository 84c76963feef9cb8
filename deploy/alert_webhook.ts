/**
 * A webhook receiver for Alertmanager (deploy/alertmanager/alertmanager.yml): logs every alert of every
 * notification as one JSON line on stdout (`docker compose logs alert-webhook`, `kubectl logs deploy/alert-webhook`)
 * and keeps the last 200 in memory for `GET /alerts`. It is where alerts land until a real receiver (Slack,
 * PagerDuty, ...) is added to alertmanager.yml, and the receiving end of the end-to-end alert test.
 *
 *   deno run -A deploy/alert_webhook.ts        # ALERT_WEBHOOK_HOST (default 127.0.0.1), ALERT_WEBHOOK_PORT (9099)
 *
 * Routes: `POST /alerts` (Alertmanager's webhook payload, version 4; at most 1 MiB), `GET /alerts` (the kept
 * alerts, newest last), `GET /healthz`, `GET /metrics` (`alert_webhook_notifications_total`,
 * `alert_webhook_alerts_total`, `alert_webhook_rejected_total`).
 */

/** One alert of an Alertmanager notification, as logged and kept. */
export interface ReceivedAlert {
  receivedAt: string;
  receiver: string;
  status: string;
  alertname: string;
  severity: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
}

export interface AlertWebhook {
  handler(request: Request): Promise<Response>;
  /** Alerts received so far (the last 200), oldest first. */
  readonly received: readonly ReceivedAlert[];
}

const MAX_BODY_BYTES = 1 << 20;
const KEEP = 200;

function stringMap(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (value && typeof value === "object") {
    for (const [key, v] of Object.entries(value)) out[key] = String(v);
  }
  return out;
}

export function createAlertWebhook(log: (line: string) => void = console.log): AlertWebhook {
  const received: ReceivedAlert[] = [];
  let notifications = 0;
  let alerts = 0;
  let rejected = 0;

  const reject = (status: number, message: string) => {
    rejected++;
    return new Response(`${message}\n`, { status });
  };

  async function handler(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    if (path === "/healthz" && request.method === "GET") return new Response("ok\n");
    if (path === "/metrics" && request.method === "GET") {
      return new Response(
        [
          "# HELP alert_webhook_notifications_total Notifications received from Alertmanager.",
          "# TYPE alert_webhook_notifications_total counter",
          `alert_webhook_notifications_total ${notifications}`,
          "# HELP alert_webhook_alerts_total Alerts in those notifications.",
          "# TYPE alert_webhook_alerts_total counter",
          `alert_webhook_alerts_total ${alerts}`,
          "# HELP alert_webhook_rejected_total Requests refused (bad path, method, size or body).",
          "# TYPE alert_webhook_rejected_total counter",
          `alert_webhook_rejected_total ${rejected}`,
          "",
        ].join("\n"),
        { headers: { "content-type": "text/plain; version=0.0.4" } },
      );
    }
    if (path !== "/alerts") return reject(404, "not found");
    if (request.method === "GET") return Response.json(received);
    if (request.method !== "POST") return reject(405, "POST or GET");
    const declared = Number(request.headers.get("content-length") ?? "0");
    if (declared > MAX_BODY_BYTES) return reject(413, "body too large");
    const body = new Uint8Array(await request.arrayBuffer());
    if (body.byteLength > MAX_BODY_BYTES) return reject(413, "body too large");
    let payload: { receiver?: unknown; alerts?: unknown };
    try {
      payload = JSON.parse(new TextDecoder().decode(body));
    } catch {
      return reject(400, "not JSON");
    }
    if (!payload || !Array.isArray(payload.alerts)) {
      return reject(400, "no alerts array (not an Alertmanager payload)");
    }
    notifications++;
    const now = new Date().toISOString();
    for (const raw of payload.alerts as Array<Record<string, unknown>>) {
      const labels = stringMap(raw?.labels);
      const alert: ReceivedAlert = {
        receivedAt: now,
        receiver: String(payload.receiver ?? ""),
        status: String(raw?.status ?? ""),
        alertname: labels.alertname ?? "",
        severity: labels.severity ?? "",
        labels,
        annotations: stringMap(raw?.annotations),
        startsAt: String(raw?.startsAt ?? ""),
        endsAt: String(raw?.endsAt ?? ""),
      };
      alerts++;
      received.push(alert);
      if (received.length > KEEP) received.shift();
      log(JSON.stringify({ msg: "alert", ...alert }));
    }
    return new Response("ok\n");
  }

  return { handler, received };
}

if (import.meta.main) {
  const hostname = Deno.env.get("ALERT_WEBHOOK_HOST") ?? "127.0.0.1";
  const port = Number(Deno.env.get("ALERT_WEBHOOK_PORT") ?? "9099");
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(
      `alert-webhook: ALERT_WEBHOOK_PORT must be a port number, got ${Deno.env.get("ALERT_WEBHOOK_PORT")}`,
    );
    Deno.exit(2);
  }
  const webhook = createAlertWebhook();
  const server = Deno.serve({
    hostname,
    port,
    onListen: ({ hostname, port }) => console.log(JSON.stringify({ msg: "listening", hostname, port })),
  }, webhook.handler);
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => server.shutdown());
  }
  await server.finished;
}
