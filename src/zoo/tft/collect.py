"""The TFT family's collector (`python -m zoo.collect`, `TFTModule.collect`): sample this machine's
cpu/memory/disk/load into Parquet, to forecast it.

    python -m zoo.collect out=data/metrics/myhost interval=10            # until Ctrl-C
    python -m zoo.collect out=data/metrics/myhost interval=1 samples=60
    python -m zoo.train model=tft data=tft/file data.path=data/metrics/myhost data.step=1min

The output is a folder of Parquet parts (``part-<first timestamp>-<rows>.parquet``, read as one table by
pandas/pyarrow and by ``data=tft/file``). Appending never rewrites existing parts. Every sample is
first appended to ``pending.jsonl`` and fsync'ed; every ``flush_every`` samples (and on exit, Ctrl-C
or SIGTERM) the pending rows become a new part, written to a temporary name and renamed into place,
and only then is the journal emptied. A collector killed at any moment therefore loses no sampled row:
the next run turns the leftover journal into a part first. Columns: timestamp (UTC), host,
cpu_percent, memory_percent, disk_percent (usage of ``disk_path``), load_average (1 minute),
swap_percent, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zoo.core.errors import ZooError

JOURNAL = "pending.jsonl"


@dataclass
class SamplingSettings:
    """What `zoo.collect` and `zoo.monitor` both sample (conf/collect.yaml, conf/monitor.yaml state the same
    defaults; tests/tft/test_configs.py keeps them equal)."""

    interval: float = 10.0
    """Seconds between samples."""
    flush_every: int = 60
    """Samples per Parquet part (every row is journaled and fsync'ed before that)."""
    host: str | None = None
    """Series id to record (None: the hostname)."""
    disk_path: str = "/"
    """The filesystem whose usage becomes disk_percent."""


@dataclass
class CollectSettings(SamplingSettings):
    """`python -m zoo.collect` (conf/collect.yaml)."""

    samples: int | None = None
    """Stop after this many samples (None: until Ctrl-C or SIGTERM)."""


def settings_of(cls: type, cfg: Any) -> Any:
    """The typed settings `cls` (a dataclass) from a config's keys; a key the config lacks keeps its default."""
    return cls(**{f.name: cfg.get(f.name) for f in fields(cls) if cfg.get(f.name) is not None})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_sampling(cfg: Any, out_holds: str, positive: tuple[str, ...] = ("interval", "flush_every")) -> None:
    """Refuse bad sampling keys in one line before anything is written (the output folder may hold earlier
    samples): `positive` keys must be positive numbers (whole ones but for ``interval``), ``out`` a folder
    (`out_holds` says what goes there), ``disk_path`` an existing path."""
    for key in positive:
        value = cfg.get(key)
        if value is not None and (not _number(value) or value <= 0):
            raise ZooError(
                f"{key}={value} must be a positive number"
                + (" (or null)" if key in ("history", "duration", "samples") else "")
            )
        if value is not None and key not in ("interval", "duration") and int(value) != value:
            raise ZooError(f"{key}={value} must be a whole number of samples")
    out = Path(str(cfg.get("out")))
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ZooError(f"out={out}: {existing} is a file (expected a folder {out_holds})")
    disk_path = cfg.get("disk_path")
    if disk_path is not None and not Path(str(disk_path)).exists():
        raise ZooError(
            f"disk_path={disk_path}: no such file or folder (expected a path on the filesystem whose usage "
            "becomes disk_percent)"
        )


class Journal:
    """A folder of Parquet parts fed through an fsync'ed append-only journal (see the module docstring).
    Rows are JSON objects; `time_columns` (ISO strings) become datetimes in the parts, and the first of
    them names each part. `zoo.monitor` keeps its samples, forecasts and flags this way."""

    def __init__(self, out: str | os.PathLike[str], time_columns: tuple[str, ...] = ("timestamp",)):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.journal = self.out / JOURNAL
        self.time_columns = tuple(time_columns)
        self.recover()

    def append(self, row: dict[str, Any]) -> None:
        with open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def pending(self) -> list[dict[str, Any]]:
        if not self.journal.is_file():
            return []
        rows = []
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write: the only row that can be lost
        return rows

    def flush(self) -> Path | None:
        """Turn the journal into a new Parquet part (atomically), then empty the journal."""
        import pandas as pd

        rows = self.pending()
        if not rows:
            self.journal.unlink(missing_ok=True)
            return None
        frame = pd.DataFrame(rows)
        for col in self.time_columns:
            if col in frame.columns:
                frame[col] = pd.to_datetime(frame[col], utc=True).dt.tz_convert(None)
        stamp = frame[self.time_columns[0]].iloc[0].strftime("%Y%m%dT%H%M%S%f")
        part = self.out / f"part-{stamp}-{len(frame):06d}.parquet"
        tmp = part.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, part)
        # A crash between the rename and here leaves the rows both in the part and the journal; the
        # part's name is derived from its first row, so recovery overwrites it instead of duplicating.
        self.journal.unlink(missing_ok=True)
        return part

    def recover(self) -> None:
        for tmp in self.out.glob("*.parquet.tmp"):
            tmp.unlink()
        self.flush()


class Stop:
    """Whether a sampling loop (collector, monitor, fleet monitor) is over: `duration` passed, or SIGTERM came
    (its handler set inside the with block, the previous one restored after)."""

    def __init__(self, duration: float | None) -> None:
        self.end = time.monotonic() + duration if duration else None
        self.signalled = False

    def __enter__(self) -> Stop:
        self.old = signal.signal(signal.SIGTERM, self._signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self.old)

    def _signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        return self.signalled or (self.end is not None and time.monotonic() >= self.end)

    def sleep_until(self, t: float) -> None:
        while not self() and time.monotonic() < t:
            time.sleep(min(0.2, max(0.0, t - time.monotonic())))


class Collector(Journal):
    """Samples this machine with psutil into a `Journal` folder."""

    def __init__(self, out: str | os.PathLike[str], host: str | None = None, disk_path: str = "/"):
        import psutil

        self.psutil = psutil
        self.host = host or socket.gethostname()
        self.disk_path = disk_path
        self._last: tuple[float, Any, Any] | None = None
        psutil.cpu_percent(interval=None)  # the first call only starts psutil's measuring window
        super().__init__(out)

    def sample(self) -> dict[str, Any]:
        ps = self.psutil
        now = time.time()
        disk, net = ps.disk_io_counters(), ps.net_io_counters()
        row: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z",
            "host": self.host,
            "cpu_percent": float(ps.cpu_percent(interval=None)),
            "memory_percent": float(ps.virtual_memory().percent),
            "disk_percent": float(ps.disk_usage(self.disk_path).percent),
            "load_average": float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else float("nan"),
            "swap_percent": float(ps.swap_memory().percent),
        }
        rates = {
            "disk_read_bps": float("nan"),
            "disk_write_bps": float("nan"),
            "net_rx_bps": float("nan"),
            "net_tx_bps": float("nan"),
        }
        if self._last is not None and disk is not None and net is not None:
            t0, d0, n0 = self._last
            dt = max(now - t0, 1e-6)
            if d0 is not None and n0 is not None:
                rates = {
                    "disk_read_bps": (disk.read_bytes - d0.read_bytes) / dt,
                    "disk_write_bps": (disk.write_bytes - d0.write_bytes) / dt,
                    "net_rx_bps": (net.bytes_recv - n0.bytes_recv) / dt,
                    "net_tx_bps": (net.bytes_sent - n0.bytes_sent) / dt,
                }
        self._last = (now, disk, net)
        row.update(rates)
        return row

    def run(self, interval: float, samples: int | None = None, flush_every: int = 60) -> int:
        n = 0
        next_t = time.monotonic()
        with Stop(None) as stop:
            try:
                while not stop() and (samples is None or n < samples):
                    self.append(self.sample())
                    n += 1
                    if n % flush_every == 0:
                        self.flush()
                    next_t += interval
                    stop.sleep_until(next_t)
            except KeyboardInterrupt:
                pass
            finally:
                self.flush()
        return n


def read(out: str | os.PathLike[str], time_columns: tuple[str, ...] = ("timestamp",)) -> Any:
    """All collected rows (parts and the not yet flushed journal), sorted by time."""
    import pandas as pd

    folder = Path(out)
    parts = sorted(folder.glob("part-*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    journal = folder / JOURNAL
    if journal.is_file():
        reader = Journal.__new__(Journal)  # no recover(): reading must not write into the folder
        reader.journal = journal
        rows = reader.pending()
        if rows:
            j = pd.DataFrame(rows)
            for col in time_columns:
                if col in j.columns:
                    j[col] = pd.to_datetime(j[col], utc=True).dt.tz_convert(None)
            frames.append(j)
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(time_columns[0], kind="stable").reset_index(drop=True)


def collect(cfg: Any) -> int:
    """`python -m zoo.collect`: sample until ``samples`` or Ctrl-C/SIGTERM; the number of samples taken."""
    check_sampling(cfg, "of Parquet parts", ("interval", "flush_every", "samples"))
    s = settings_of(CollectSettings, cfg)
    collector = Collector(str(cfg.out), host=s.host, disk_path=s.disk_path)
    n = collector.run(s.interval, s.samples, s.flush_every)
    print(f"[zoo] collected {n} samples into {collector.out}", flush=True)
    return n
