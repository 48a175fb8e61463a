"""Durable asynchronous inference over NATS JetStream (`pip install "ember-llm[queue]"`).

A job is an OpenAI request body (chat or text completion) stored before it is acknowledged
and removed only after its result is stored. The pieces, one module each:

- `job.py`: the job record (status, attempts, timestamps, result or error) and its statuses.
- `layout.py`: the JetStream names and settings (work-queue stream, key-value bucket of job
  states, object store of large results) in one place.
- `nats_server.py`: the embedded `nats-server` (JetStream, file store) Ember starts when it is
  given no `--nats` URL.
- `job_store.py`: submit (deduplicated by job id and idempotency key), read, watch, cancel,
  store a result with compare-and-set, queue depth: what gateways and workers share.
- `job_chunks.py`: a streamed job's chunks from its worker to the gateway relaying them (core
  NATS, one subject per job; the stored result is the durable copy).
- `errors.py`: queue unavailable (naming the URL), full (429), idempotency conflict (409),
  a body over the server's message limit (413), nats-py or nats-server missing.
- `serve/queue_worker.py` (in `serve/`, since it runs the engine server): `ember worker`: pulls
  jobs while it has room, runs each through a local engine server, heartbeats, stores, then
  acks; naks retryable failures with a delay; exits after `--idle-timeout` seconds without
  work.
- `serve/async_routes.py` (the HTTP side): `/v1/async/...`, `/v1/jobs/{id}`.

Delivery: at least once (a worker that dies before its ack leaves the job to be delivered
again); exactly one stored result per job (results are stored with compare-and-set on the
job's state, and a redelivered job whose result is stored is acked, not run again).
"""
