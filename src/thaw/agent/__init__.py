"""The node agent: snapshot and restore as a service, with jobs, integrity, canaries, metrics and audit.

One agent runs per node (the Kubernetes DaemonSet runs it). It launches workers in thaw
sandboxes, snapshots them into the shared artifact store, restores artifacts on its
node, and answers an HTTP API on a unix socket (and, with a token, TCP)::

    models.py      the API's request and response bodies (pydantic)
    api.py         routes, authentication middleware, errors as JSON      (FastAPI)
    auth.py        peer credentials (SO_PEERCRED) and bearer tokens
    service.py     Agent: accept → job → pipeline; recovery after a restart
    holds.py       one operation per worker at a time (409 otherwise)
    jobs.py        the durable job book (SQLite)
    journaled.py   a store wrapper recording what a job staged, for recovery
    metrics.py     Prometheus metrics
    audit.py       the append-only JSON-lines audit log
    server.py      uvicorn on the unix socket and TCP
    client.py      AgentClient, used by the CLI and the Kubernetes operator

See docs/agent.md.
"""
