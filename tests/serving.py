"""Helpers of the server tests: `python -m zoo.serve` as a subprocess on 127.0.0.1 and a free port, waited
for on /health, always stopped by its pid (its own session, so its worker processes go with it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, timeout: float = 30
    ):
        """(status, parsed JSON or text) of one request."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and not (headers or {}).get("Content-Type"):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def post(self, path: str, body: Any, **kw: Any):
        return self.request("POST", path, body, **kw)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.3)
    raise RuntimeError(f"server not healthy after {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    """SIGTERM, then SIGKILL of its process group if it does not exit in time: its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a failed shutdown
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    return proc.returncode


@contextlib.contextmanager
def serving(ckpt: Path, *overrides: str, log_dir: Path, timeout: float = 120) -> Iterator[Server]:
    """A server of `ckpt` for the duration of the block."""
    port = free_port()
    log = log_dir / f"serve_{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zoo.serve", f"ckpt_path={ckpt}", f"port={port}",
             f"hydra.run.dir={log_dir}/hydra_{port}", *overrides],
            cwd=log_dir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout)
        yield Server(proc, url, log)
    finally:
        stop(proc)


def one_line_error(status: int, body: Any, field: str | None) -> str:
    """The error message of a 4xx answer, checked to be OpenAI's shape, one line, naming `field`."""
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]["message"]
    assert "\n" not in message and message, body
    if field is not None:
        assert field in message, (field, message)
    return message
