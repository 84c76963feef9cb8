-- load_run_id: the load run that sent the request (the event's load_run_id: gRPC metadata or HTTP header
-- "tailwatch-load-run" copied by the services), empty otherwise. A run's cross-checks select its rows by it,
-- whatever other traffic the stack serves. Additive; "already exists" from a re-run counts as done.
ALTER TABLE {{database}}.request_events ADD COLUMN load_run_id String DEFAULT '';
