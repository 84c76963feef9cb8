"""Runs SQL statements on chDB (the ClickHouse engine in process, a current release) for Tailwatch's tests.

Reads one JSON object per line on stdin: {"id": n, "sql": "..."}; answers one JSON object per line on stdout:
{"id": n, "ok": true, "body": "<the statement's output as text>"} or {"id": n, "ok": false, "error": "..."}.
The session's data lives in the directory given as the first argument. Exits at end of input.
"""
import json
import sys

from chdb import session


def main() -> None:
    db = session.Session(sys.argv[1])
    out = sys.stdout
    out.write(json.dumps({"ready": True, "version": db.query("SELECT version()", "TSV").bytes().decode().strip()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            result = db.query(request["sql"], "TSV")
            body = result.bytes().decode("utf-8", errors="replace") if result is not None else ""
            answer = {"id": request["id"], "ok": True, "body": body}
        except Exception as error:  # every engine error goes back to the caller, which decides
            answer = {"id": request["id"], "ok": False, "error": str(error)}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
