"""The node agent: snapshot and restore as a service, with jobs, integrity, canaries, metrics and audit.

One agent runs per node (the Kubernetes DaemonSet runs it). It launches workers in thaw
sandboxes, snapshots them into the shared artifact store, restores artifacts on its
node, and answers an HTTP API on a unix socket (and, with a token, TCP with TLS)::

    api.py         routes, authentication middleware, body limits, errors as JSON  (FastAPI; models: thaw.api)
    auth.py        peer credentials (SO_PEERCRED), bearer tokens and their scopes
    service.py     Agent: requests → jobs; the pipeline's recovery after a restart
    runner.py      JobRunner: holds, the job book, the canary gate, thaw.ops.LocalOperations
    pods.py        workers in pods: the snapshot source's sandbox, the pod to restore into
    holds.py       one operation per worker at a time (409 otherwise)
    jobs.py        the durable job book (SQLite), idempotency keys
    metrics.py     Prometheus metrics
    audit.py       the append-only, hash-chained JSON-lines audit log
    server.py      uvicorn on the unix socket and TCP (TLS)

The CLI and the operator reach it through thaw.api.AgentClient.

See docs/agent.md.
"""
