/**
 * The request header (REST) and gRPC metadata key naming the load run that sent a request: its value is copied
 * into the event's `load_run_id` and sent on with every downstream call, so that a run's rows in every service
 * are selected exactly, whatever else the stack serves (load/README.md).
 */
export const LOAD_RUN_HEADER = "tailwatch-load-run";

const LOAD_RUN_ID = /^[A-Za-z0-9._:-]{1,64}$/;

/** The load run id a header value names: a plain id of 1-64 characters of [A-Za-z0-9._:-], else "". */
export function loadRunIdOf(value: string | undefined): string {
  return value !== undefined && LOAD_RUN_ID.test(value) ? value : "";
}
