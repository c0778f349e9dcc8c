"""A tiny HTTP service for tests: ``python tests/services/http_server.py [--port P]``.

``GET /`` and ``GET /healthz`` answer 200 with the instance name; it prints one line
once it listens ("http listening on P") and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {os.environ.get('DEVCLUSTER_INSTANCE', '?')}\n".encode()
        self.send_response(200 if self.path in ("/", "/healthz") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads the log lines it cares about


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"http listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    print("http stopped", flush=True)


if __name__ == "__main__":
    main()
