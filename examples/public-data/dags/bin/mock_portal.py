#!/usr/bin/env python3
"""A local stand-in for the public data portal's HTTP API, for the securities
example (it serves ../data/listings.tsv plus generated listings, so the example runs
offline). Like the real portal on a bad day, it fails: about a third of the
securities answer 503 (with Retry-After: 1) once or twice before their details
come back; which ones is fixed by the code, so a run is repeatable.

  mock_portal.py --port 18765 [--generated 45] [--idle-exit 120] [--background]

Every request needs serviceKey=<key> in the query (PORTAL_KEY, default
example-key), like the portal's API keys. Endpoints, all JSON:
  GET /markets                    {"items": [{"code": "KOSPI", "name": "..."}]}
  GET /short-codes?market=KOSPI   {"items": ["005930", ...]}
  GET /details?code=005930        {"code", "name", "issuer", "issue_date"}

With --background it starts a detached server unless one already answers on the
port, waits until it answers, and returns. The server stops by itself after
--idle-exit seconds without a request.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DATA = Path(__file__).resolve().parent.parent / "data"
KEY = os.environ.get("PORTAL_KEY", "example-key")


def listings(generated):
    rows = [line.split("\t") for line in (DATA / "listings.tsv").read_text().splitlines() if line]
    for i in range(generated):
        code = f"{100000 + i * 37:06d}"
        rows.append(["KOSPI", code, f"Example Corp {i}", f"Example Corp {i} Co., Ltd.", f"20{i % 25:02d}-0{1 + i % 9}-1{i % 10}"])
    return rows


def markets():
    return [line.split("\t") for line in (DATA / "markets.tsv").read_text().splitlines() if line]


def failures_for(code):
    """How many times this code answers 503 before its details: 0, 1 or 2."""
    return hashlib.sha256(code.encode()).digest()[0] % 3


class Portal(BaseHTTPRequestHandler):
    rows = []
    asked = {}
    lock = threading.Lock()
    last_request = time.monotonic()

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        Portal.last_request = time.monotonic()
        url = urlparse(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if query.get("serviceKey") != KEY:
            return self.answer(401, {"error": "SERVICE_KEY_IS_NOT_REGISTERED_ERROR"})
        if url.path == "/health":
            return self.answer(200, {"ok": True})
        if url.path == "/markets":
            return self.answer(200, {"items": [{"code": code, "name": name} for code, name in markets()]})
        if url.path == "/short-codes":
            market = query.get("market", "")
            return self.answer(200, {"items": [row[1] for row in Portal.rows if row[0] == market]})
        if url.path == "/details":
            code = query.get("code", "")
            row = next((row for row in Portal.rows if row[1] == code), None)
            if row is None:
                return self.answer(404, {"error": f"no security {code}"})
            with Portal.lock:
                Portal.asked[code] = Portal.asked.get(code, 0) + 1
                unlucky = Portal.asked[code] <= failures_for(code)
            if unlucky:
                return self.answer(503, {"error": "SERVICE_UNAVAILABLE"}, [("Retry-After", "1")])
            _, code, name, issuer, issued = row
            return self.answer(200, {"code": code, "name": name, "issuer": issuer, "issue_date": issued})
        return self.answer(404, {"error": "no such endpoint"})


def answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health?serviceKey={KEY}", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--generated", type=int, default=45)
    parser.add_argument("--idle-exit", type=float, default=120)
    parser.add_argument("--background", action="store_true")
    args = parser.parse_args()
    if args.background:
        if not answers(args.port):
            command = [sys.executable, __file__, "--port", str(args.port), "--generated", str(args.generated),
                       "--idle-exit", str(args.idle_exit)]
            subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not answers(args.port):
                if time.monotonic() > deadline:
                    sys.exit(f"the portal did not start on port {args.port}")
                time.sleep(0.05)
        print(f"portal answering on 127.0.0.1:{args.port}")
        return
    Portal.rows = listings(args.generated)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Portal)
    server.daemon_threads = True

    def stop_when_idle():
        while time.monotonic() - Portal.last_request < args.idle_exit:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=stop_when_idle, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
