"""The real Prometheus parts the Prometheus tests and `benchmarks.prom` run against: Debian's `prometheus`,
`promtool` and `prometheus-node-exporter` (installed by ``make test-prometheus``), each started on a free
127.0.0.1 port with a temporary data folder and stopped by its pid; and a generated fleet written as
node_exporter series in OpenMetrics, for ``promtool tsdb create-blocks-from openmetrics`` to backfill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

NODE_EXPORTER_NAMES = ("prometheus-node-exporter", "node_exporter")
MEM_TOTAL = 8 * 2**30
FS_SIZE = 100 * 2**30


def binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def missing_parts() -> str | None:
    """None when prometheus, promtool and node_exporter are all here, else a one-line reason."""
    missing = [n for n, b in (("prometheus", binary("prometheus")), ("promtool", binary("promtool")),
                              ("prometheus-node-exporter", binary(*NODE_EXPORTER_NAMES))) if b is None]  # fmt: skip
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not installed (make test-prometheus installs Debian's packages with apt-get)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a started process by its pid: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def prometheus(folder: Path, scrape: list[dict[str, Any]] | None = None, interval: str = "1s",
               port: int | None = None) -> Iterator[str]:  # fmt: skip
    """A Prometheus on 127.0.0.1:<free port> with its data in `folder/data` (backfilled blocks placed
    there first are served), scraping `scrape` (``[{job, targets, honor_labels}]``) every `interval`;
    yields its URL."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": s["job"],
                "scrape_interval": interval,
                "static_configs": [{"targets": s["targets"]}],
                "honor_labels": bool(s.get("honor_labels", False)),
            }
            for s in scrape or []
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(folder / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=3650d", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", 60, proc)
        yield url
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def node_exporter(folder: Path) -> Iterator[str]:
    """node_exporter on 127.0.0.1:<free port>; yields its host:port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "node_exporter.log", "wb")
    # overlay counts as a filesystem here: in a container "/" is one, and disk_percent reads "/"
    fs_types = "--collector.filesystem.fs-types-exclude=^(autofs|binfmt_misc|cgroup2?|devpts|mqueue|nsfs|proc|sysfs|tracefs)$"
    proc = subprocess.Popen([binary(*NODE_EXPORTER_NAMES), f"--web.listen-address=127.0.0.1:{port}", fs_types],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", 30, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


# -- a generated fleet as node_exporter history ------------------------------------------------------------
def fleet_openmetrics(path: Path, n_hosts: int, days: float, step_s: int, end: float, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Write `zoo.tft.sources.synthetic_hosts` (`n_hosts` x `days` at `step_s`, ending at unix time `end`)
    as the node_exporter series the default ``data=tft/prometheus`` queries read: an idle-CPU counter
    (``node_cpu_seconds_total{mode="idle"}``), MemAvailable/MemTotal, the root filesystem's avail/size
    bytes and node_load1, labels ``instance`` and ``job="node"``. Returns what was written."""
    from zoo.tft.sources import synthetic_hosts

    frame = synthetic_hosts(n_hosts=n_hosts, days=days, step_minutes=step_s / 60, noise=1.0, seed=seed)
    n = len(frame) // n_hosts
    times = end - step_s * (n - 1) + step_s * np.arange(n)
    stamps = np.char.mod("%d", times.astype(np.int64))
    hosts = [f"host{h:03d}:9100" for h in range(n_hosts)]
    col = {k: frame[k].to_numpy().reshape(n_hosts, n) for k in ("cpu_percent", "memory_percent", "disk_percent", "load_average")}  # fmt: skip
    busy = np.clip(col["cpu_percent"], 0, 100) / 100
    idle = np.cumsum((1 - busy) * step_s, axis=1)  # a counter: seconds idle since boot
    families = [
        ("node_cpu_seconds_total", "counter", '{cpu="0",instance="%s",job="node",mode="idle"}', idle, "%.3f"),
        ("node_memory_MemAvailable_bytes", "gauge", '{instance="%s",job="node"}', MEM_TOTAL * (1 - np.clip(col["memory_percent"], 0, 100) / 100), "%.0f"),
        ("node_memory_MemTotal_bytes", "gauge", '{instance="%s",job="node"}', np.full((n_hosts, n), float(MEM_TOTAL)), "%.0f"),
        ("node_filesystem_avail_bytes", "gauge", '{device="/dev/sda1",fstype="ext4",instance="%s",job="node",mountpoint="/"}', FS_SIZE * (1 - np.clip(col["disk_percent"], 0, 100) / 100), "%.0f"),
        ("node_filesystem_size_bytes", "gauge", '{device="/dev/sda1",fstype="ext4",instance="%s",job="node",mountpoint="/"}', np.full((n_hosts, n), float(FS_SIZE)), "%.0f"),
        ("node_load1", "gauge", '{instance="%s",job="node"}', np.clip(col["load_average"], 0, None), "%.4f"),
    ]  # fmt: skip
    with open(path, "w") as fh:
        for name, kind, labels, values, fmt in families:
            fh.write(f"# TYPE {name.removesuffix('_total') if kind == 'counter' else name} {kind}\n")
            for h, host in enumerate(hosts):
                head = name + labels % host + " "
                lines = np.char.add(np.char.add(np.char.add(head, np.char.mod(fmt, values[h])), " "), stamps)
                fh.write("\n".join(lines.tolist()))
                fh.write("\n")
        fh.write("# EOF\n")
    return {"hosts": n_hosts, "steps": n, "start": float(times[0]), "end": float(times[-1]), "series": len(families) * n_hosts, "frame": frame}  # fmt: skip


def backfill(openmetrics: Path, data_dir: Path) -> float:
    """``promtool tsdb create-blocks-from openmetrics`` into `data_dir`; returns its seconds."""
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # One block per 8 days: with the default 2 h blocks promtool reads the whole input once per block
    # (5 min instead of 17 s for 50 hosts x 7 days x 1 min).
    subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=192h",
                    str(openmetrics), str(data_dir)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    return time.perf_counter() - t0
