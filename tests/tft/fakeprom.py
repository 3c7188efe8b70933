"""An in-process stand-in for Prometheus' /api/v1/query_range (127.0.0.1, a free port), for the pure-Python
tests of the pull and the fleet monitor: series are functions of time, failures are scripted per query."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class FakePrometheus:
    """`series[expr]` -> list of (labels, f(t) -> value); `fail[expr]` -> how many times to answer 503 first;
    `bad` expressions answer 400 bad_data; `offset` shifts the answered timestamps (a wrong step);
    `requests` records (expr, start, end, step) of every query."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[dict[str, str], Callable[[float], float]]]] = {}
        self.fail: dict[str, int] = {}
        self.bad: set[str] = set()
        self.offset = 0.0
        self.requests: list[tuple[str, float, float, float]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body, separators=(",", ":")).encode()  # compact, as Prometheus answers
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                self._query(form)

            def do_GET(self) -> None:
                self._query({k: v[0] for k, v in parse_qs(self.path.split("?", 1)[-1]).items()})

            def _query(self, form: dict[str, str]) -> None:
                expr = form["query"]
                if self.path.startswith("/api/v1/query?") or self.path == "/api/v1/query":  # count(<expr>)
                    inner = expr[len("count(") : -1] if expr.startswith("count(") else expr
                    n = len(fake.series.get(inner, []))
                    result = [{"metric": {}, "value": [float(form.get("time", 0)), str(n)]}] if n else []
                    return self._answer(
                        200, {"status": "success", "data": {"resultType": "vector", "result": result}}
                    )
                start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
                with fake.lock:
                    fake.requests.append((expr, start, end, step))
                    if fake.fail.get(expr, 0) > 0:
                        fake.fail[expr] -= 1
                        return self._answer(
                            503, {"status": "error", "errorType": "unavailable", "error": "busy"}
                        )
                if expr in fake.bad:
                    return self._answer(400, {"status": "error", "errorType": "bad_data",
                                              "error": f'1:5: parse error: unexpected "{expr}"'})  # fmt: skip
                n = int(round((end - start) / step)) + 1
                if n > 11_000:
                    return self._answer(400, {"status": "error", "errorType": "bad_data",
                                              "error": "exceeded maximum resolution of 11,000 points per timeseries"})  # fmt: skip
                result = []
                for labels, f in fake.series.get(expr, []):
                    times = [start + i * step + fake.offset for i in range(n)]
                    values = [[t, repr(float(f(t)))] for t in times if f(t) is not None]
                    if values:
                        result.append({"metric": labels, "values": values})
                self._answer(200, {"status": "success", "data": {"resultType": "matrix", "result": result}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
