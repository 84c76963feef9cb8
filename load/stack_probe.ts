/** Reads the local stack's counters: service metrics over HTTP and ClickHouse row counts. */
import { LOCAL } from "@tailwatch/scripts";

export const SERVICE_HTTP_PORTS: Record<string, number> = { catalog: 8081, orders: 8082, payments: 8083 };

export interface ServiceCounts {
  served: number;
  published: number;
  dropped: number;
  pending: number;
}

function sumMetric(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) {
      sum += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return sum;
}

export async function serviceCounts(service: string): Promise<ServiceCounts> {
  const text = await (await fetch(`http://127.0.0.1:${SERVICE_HTTP_PORTS[service]}/metrics`)).text();
  return {
    served: sumMetric(text, "requests_total"),
    published: sumMetric(text, "events_published_total"),
    dropped: sumMetric(text, "events_dropped_total"),
    pending: sumMetric(text, "events_buffer_depth"),
  };
}

/** Runs SQL as the local admin user; JSONEachRow rows. */
export async function clickhouseRows<T>(sql: string): Promise<T[]> {
  const response = await fetch("http://127.0.0.1:8123/", {
    method: "POST",
    body: `${sql} FORMAT JSONEachRow`,
    headers: { "X-ClickHouse-User": "tailwatch_admin", "X-ClickHouse-Key": LOCAL.clickhouseAdminPassword },
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`ClickHouse: ${text.trim()}`);
  return text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as T);
}

/** Rows and distinct event ids per service in profiler.request_events (empty when ClickHouse is not up). */
export async function rowCounts(): Promise<Record<string, { rows: number; distinct: number }>> {
  try {
    const rows = await clickhouseRows<{ service: string; rows: string; distinct: string }>(
      "SELECT service, count() AS rows, uniqExact(event_id) AS distinct FROM profiler.request_events GROUP BY service",
    );
    return Object.fromEntries(
      rows.map((r) => [r.service, { rows: Number(r.rows), distinct: Number(r.distinct) }]),
    );
  } catch {
    return {};
  }
}
