/**
 * "Copy as SQL": every chart and table shows the exact statement behind it (time range written in; paste it
 * into clickhouse-client as the read-only user). Without JavaScript the statement is in a <details>; with
 * it, a button copies it.
 */
import { useEffect, useState } from "preact/hooks";

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context (http on a non-loopback address): the old way.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

export function CopySql(props: { id: string; sql?: string; source?: string }) {
  const [mounted, setMounted] = useState(false);
  const [copied, setCopied] = useState<"" | "copied" | "failed">("");
  useEffect(() => setMounted(true), []);
  if (!props.sql) return props.source ? <p class="source">Source: {props.source}</p> : null;
  return (
    <div class="sql">
      {mounted
        ? (
          <button
            type="button"
            class="copy-sql"
            data-sql-for={props.id}
            aria-label={`Copy the SQL of ${props.id}`}
            onClick={async () => {
              setCopied(await copyText(props.sql!) ? "copied" : "failed");
              setTimeout(() => setCopied(""), 2000);
            }}
          >
            Copy as SQL
          </button>
        )
        : null}
      <span role="status" class="muted">
        {copied === "copied" ? " copied" : copied === "failed" ? " copy failed" : ""}
      </span>
      <details>
        <summary>SQL</summary>
        <pre data-sql={props.id}>{props.sql}</pre>
      </details>
    </div>
  );
}
