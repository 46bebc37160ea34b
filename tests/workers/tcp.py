"""A worker that serves HTTP on a fixed TCP port of its own loopback, after it left its quiesce point.

Every thaw sandbox has its own network namespace, so copies restored at once can all listen on
the same port; the host reaches them only from inside that namespace (thaw bench --answer-port).

    GET /answer   {"state": <digest of the warm-up's state>}
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sys

import thaw.worker

PORT = int(os.environ.get("TEST_TCP_PORT", "8765"))


def main() -> None:
    state = hashlib.sha256(b"warm" * 100_000).hexdigest()  # the same in every process: a deterministic worker
    if thaw.worker.quiesce(canary=lambda: {"state": state}).stopped:
        sys.exit(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/answer":
                return self.send_error(404)
            body = json.dumps({"state": state, "pid": os.getpid()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
