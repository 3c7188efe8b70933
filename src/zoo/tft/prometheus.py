"""Read a fleet's history from a Prometheus server (``data=tft/prometheus``, docs/prometheus.md).

One PromQL expression per target is read with ``/api/v1/query_range`` over ``[start, end]`` at ``step``.
A range query returns at most ``max_points`` (the server's 11,000) points per series, so the range is cut
into chunks of at most that many steps; the (target, chunk) queries run in parallel up to ``parallel``,
each retried on a connection error or a 5xx/429 answer. Every finished query is written to its own
Parquet part in the pull folder (atomically), so a killed pull resumes at the first missing chunk and a
finished one is read back without asking the server again. The parts are then joined into the zoo's long
frame: ``timestamp``, ``series`` (the values of ``series_labels``, joined by ``,``), one column per
target, and one column per series label (``label_<name>``: the monitor writes them back to Prometheus).

Bad input gets one line naming the expression: a query the server refuses (bad PromQL), an unreachable
server, an expression with no data in the range, a result whose sample spacing is not ``step``, and two
result series with the same id labels (aggregate them, e.g. ``max by (instance) (...)``).
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo.core.errors import ZooError

MAX_POINTS = 11_000
"""Prometheus refuses a range query of more than 11,000 points per series."""

# node_exporter's metric names; one value per (instance, job). CPU busy is the share of non-idle CPU time
# over the last 5 minutes averaged over the host's CPUs; memory counts page cache as available (as `free`
# does); disk is the root filesystem's used share as `df` shows it (space reserved for root counts as
# used); load1 is the 1-minute load average.
DEFAULT_QUERIES = {
    "cpu_percent": '100 * (1 - avg by (instance, job) (rate(node_cpu_seconds_total{mode="idle"}[5m])))',
    "memory_percent": "100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
    "disk_percent": '100 * (1 - node_filesystem_avail_bytes{mountpoint="/"} / node_filesystem_size_bytes{mountpoint="/"})',
    "load_average": "node_load1",
}
DEFAULT_SERIES_LABELS = ["instance"]
LABEL_PREFIX = "label_"
"""Frame columns holding a series' id labels (``label_instance``...)."""


@dataclass
class PullSettings:
    """How a pull talks to the server (``data.pull.*``)."""

    parallel: int = 4
    """Range queries in flight at once."""
    retries: int = 3
    """Extra tries of a query after a connection error, a timeout or a 5xx/429 answer."""
    timeout: float = 60.0
    """Seconds one query may take."""
    max_points: int = MAX_POINTS
    """Points per series one query may return (the server's limit)."""
    max_samples: int = 250_000
    """Samples (series x steps) one query should return at most: the chunk length is planned from the
    series count (an instant ``count()`` at the start), so a query's JSON stays ~40 MB in memory however
    large the fleet."""
    backoff: float = 0.5
    """Seconds before the first retry, doubled for each next one."""


@dataclass
class Source:
    """One pull: where, what and when (``data.url``, ``data.queries``, ``data.start/end/step``)."""

    url: str
    """The server's base URL, e.g. http://127.0.0.1:9090."""
    queries: dict[str, str]
    """Target name -> PromQL expression giving one series per host."""
    start: float
    """First sample time, unix seconds (aligned to step)."""
    end: float
    """Last sample time, unix seconds."""
    step: float
    """Seconds between samples."""
    series_labels: list[str] = field(default_factory=lambda: list(DEFAULT_SERIES_LABELS))
    """Labels whose values identify a series."""
    pull: PullSettings = field(default_factory=PullSettings)

    def chunks(self, steps: int | None = None) -> list[tuple[float, float]]:
        """[(first, last)] sample times of each query: consecutive, not overlapping, at most
        ``max_points`` (and `steps`) steps each, covering start..end on the step grid."""
        total = int(np.floor((self.end - self.start) / self.step + 1e-9)) + 1
        per = max(1, min(int(self.pull.max_points), int(steps or self.pull.max_points)))
        return [
            (self.start + k * self.step, self.start + (min(total, k + per) - 1) * self.step)
            for k in range(0, total, per)
        ]

    def key(self) -> dict[str, Any]:
        """What decides the pulled data (a changed one is another pull)."""
        return {"url": self.url, "queries": dict(self.queries), "start": self.start, "end": self.end,
                "step": self.step, "series_labels": list(self.series_labels),
                "max_points": int(self.pull.max_points)}  # fmt: skip


# -- times --------------------------------------------------------------------------------------------
_RELATIVE = re.compile(r"^now(?:\s*-\s*(.+))?$")


def to_seconds(value: Any, field_name: str, now: float | None = None) -> float:
    """Unix seconds of a ``data.start``/``data.end``: a number (seconds), a date (``2024-01-31T09:00``,
    UTC unless it says otherwise) or ``now`` / ``now-7d`` (a pandas duration after the minus)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    m = _RELATIVE.match(text)
    try:
        if m:
            base = time.time() if now is None else now
            return base - (pd.Timedelta(m.group(1)).total_seconds() if m.group(1) else 0.0)
        ts = pd.Timestamp(text)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        return ts.timestamp()
    except (ValueError, TypeError) as err:
        raise ZooError(
            f"{field_name}={value}: expected unix seconds, a date (2024-01-31T09:00) or now / now-7d"
        ) from err


def make_source(url: str | None, queries: dict[str, str] | None, targets: list[str], start: Any, end: Any,
                step: str, series_labels: list[str] | None, pull: dict[str, Any] | None) -> Source:  # fmt: skip
    """A `Source` from the data config, its times resolved and aligned to the step grid (so the same
    relative range within one step pulls, and caches, the same data)."""
    if not url:
        raise ZooError(
            "data.url is not set: the Prometheus server to read, e.g. data.url=http://127.0.0.1:9090"
        )
    if not re.match(r"^https?://", str(url)):
        raise ZooError(f"data.url={url}: expected an http:// or https:// URL of a Prometheus server")
    try:
        step_s = pd.Timedelta(step).total_seconds()
    except ValueError as err:
        raise ZooError(f"data.step={step}: not a time step (e.g. 1min, 5min)") from err
    if step_s <= 0:
        raise ZooError(f"data.step={step}: must be positive")
    chosen = dict(queries or {})
    for name in targets:
        if name not in chosen and name in DEFAULT_QUERIES:
            chosen[name] = DEFAULT_QUERIES[name]
    missing = [t for t in targets if t not in chosen]
    if missing:
        raise ZooError(
            f"data.queries has no PromQL expression for target(s) {', '.join(missing)}: set data.queries.{missing[0]}=..."
        )
    now = time.time()
    t0 = to_seconds(start if start is not None else "now-7d", "data.start", now)
    t1 = to_seconds(end if end is not None else "now", "data.end", now)
    t0, t1 = np.ceil(t0 / step_s) * step_s, np.floor(t1 / step_s) * step_s
    if t1 <= t0:
        raise ZooError(f"data.start={start} is not before data.end={end} (at data.step={step})")
    labels = list(DEFAULT_SERIES_LABELS if series_labels is None else series_labels)
    if not labels:
        raise ZooError(
            "data.series_labels is empty: name the labels that identify a series (e.g. [instance])"
        )
    unknown = set(pull or {}) - set(PullSettings.__dataclass_fields__)
    if unknown:
        raise ZooError(
            f"data.pull.{sorted(unknown)[0]}: unknown setting (expected {', '.join(PullSettings.__dataclass_fields__)})"
        )
    settings = PullSettings(**(pull or {}))
    if settings.max_points < 2 or settings.parallel < 1 or settings.retries < 0:
        raise ZooError(
            f"data.pull: max_points={settings.max_points} (>= 2), parallel={settings.parallel} (>= 1), retries={settings.retries} (>= 0)"
        )
    return Source(
        str(url).rstrip("/"), {t: chosen[t] for t in targets}, float(t0), float(t1), step_s, labels, settings
    )


# -- one query ------------------------------------------------------------------------------------------
def _session() -> Any:
    import requests

    s = requests.Session()
    # Localhost JSON compresses ~10x but gzip costs more CPU than the bytes save; a remote server is
    # still asked for gzip by any proxy in between.
    s.headers["Accept-Encoding"] = "identity"
    return s


Series = tuple[dict[str, Any], np.ndarray, np.ndarray]
"""One result series of a range query: its labels, sample times (unix seconds) and values."""

_HEAD = '{"status":"success","data":{"resultType":"matrix","result":['
_VALUES = ',"values":['
_UNQUOTE = str.maketrans("", "", '[]"')
_LABELS = json.JSONDecoder()


def parse_matrix(text: str) -> list[Series] | None:
    """A range query's success body as `Series`, without a Python object per sample: each series' labels
    are decoded as JSON, and its ``[[t,"v"],...]`` block becomes ``t,v`` lines of one CSV text that
    pyarrow's (multi-threaded) CSV reader turns into two float columns in one call (``NaN``, ``+Inf``,
    ``-Inf`` included). Anything not of that exact shape (an error, warnings, native histograms, a pair
    that is not two numbers) returns None, and the caller reads the body with a full JSON parser instead.
    Building every sample as Python objects was where a pull spent its time (docs/benchmarks/prometheus.md)."""
    if not text.startswith(_HEAD):
        return None
    labels: list[dict[str, Any]] = []
    blocks: list[str] = []
    i = len(_HEAD)
    if text.startswith("]}}", i):
        return [] if len(text) == i + 3 else None
    while True:
        if not text.startswith('{"metric":', i):
            return None
        try:
            metric, i = _LABELS.raw_decode(text, i + 10)
        except ValueError:
            return None
        if not isinstance(metric, dict) or not text.startswith(_VALUES, i):
            return None
        i += len(_VALUES)
        # The block holds numbers and quoted numbers only: its first "]]" ends it.
        close = text.find("]]", i) if text.startswith("[", i) else -1
        if close < 0:
            return None
        labels.append(metric)
        blocks.append(text[i + 1 : close])  # t,"v"],[t,"v"],...,[t,"v"
        i = close + 2
        if not text.startswith("}", i):  # another key after "values" (native histograms)
            return None
        i += 1
        if text.startswith(",", i):
            i += 1
            continue
        if not (text.startswith("]}}", i) and len(text) == i + 3):
            return None
        break
    rows = np.array([b.count("],[") + 1 for b in blocks], dtype=np.int64)
    csv = "\n".join(blocks).replace("],[", "\n").translate(_UNQUOTE).encode()
    try:
        table = _read_csv(csv)
    except Exception:  # pyarrow.ArrowInvalid: a pair that is not two numbers
        return None
    if table.num_rows != int(rows.sum()):  # an empty pair (an empty line is skipped, not an error)
        return None
    times = table.column(0).to_numpy()
    values = table.column(1).to_numpy()
    cuts = np.cumsum(rows)[:-1]
    return list(zip(labels, np.split(times, cuts), np.split(values, cuts)))


def _read_csv(data: bytes) -> Any:
    """``t,v`` lines as a pyarrow table of two float64 columns; any other token is an error."""
    import io

    import pyarrow as pa
    from pyarrow import csv

    return csv.read_csv(
        io.BytesIO(data),
        read_options=csv.ReadOptions(column_names=["t", "v"]),
        convert_options=csv.ConvertOptions(
            column_types={"t": pa.float64(), "v": pa.float64()}, null_values=[], strings_can_be_null=False
        ),
    )


def _series_of(result: list[dict[str, Any]]) -> list[Series]:
    """A fully parsed matrix as `Series` (the slow path, for bodies `parse_matrix` does not take)."""
    out: list[Series] = []
    for item in result:
        values = item.get("values") or []
        times = np.fromiter((x[0] for x in values), np.float64, len(values))
        out.append((item.get("metric") or {}, times, np.array([x[1] for x in values], dtype=np.float64)))
    return out


def query_range(session: Any, source: Source, expr: str, first: float, last: float, target: str) -> list[Series]:  # fmt: skip
    """The result matrix of one range query, retried on transient failures; one-line ZooErrors."""
    import requests

    params = {"query": expr, "start": f"{first:.3f}", "end": f"{last:.3f}", "step": f"{source.step:g}"}
    where = f"data.queries.{target}={expr!r}"
    delay = source.pull.backoff
    for attempt in range(source.pull.retries + 1):
        try:
            r = session.post(f"{source.url}/api/v1/query_range", data=params, timeout=source.pull.timeout)
        except requests.RequestException as err:
            if attempt < source.pull.retries:
                time.sleep(delay)
                delay *= 2
                continue
            raise ZooError(
                f"{where}: Prometheus at data.url={source.url} is unreachable after {attempt + 1} tries "
                f"({type(err).__name__})"
            ) from err
        if (r.status_code >= 500 or r.status_code == 429) and attempt < source.pull.retries:
            time.sleep(delay)
            delay *= 2
            continue
        if r.status_code == 200:
            fast = parse_matrix(r.content.decode("utf-8", errors="replace"))
            if fast is not None:
                return fast
        try:
            body = json.loads(r.content)
        except ValueError:  # not JSON, or not UTF-8
            body = None
        if not isinstance(body, dict):
            raise ZooError(
                f"{where}: data.url={source.url} answered HTTP {r.status_code} without a Prometheus API body (is it a Prometheus server?)"
            )
        if body.get("status") != "success":
            error = str(body.get("error", "")).splitlines()[0][:200] if body.get("error") else "no error text"
            raise ZooError(
                f"{where}: Prometheus refused the query ({body.get('errorType', r.status_code)}: {error})"
            )
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise ZooError(
                f"{where}: expected a range vector result (matrix), got {data.get('resultType')!r}"
            )
        return _series_of(data.get("result") or [])
    raise AssertionError("unreachable")  # the loop returns or raises


def result_frame(result: list[Series], source: Source, target: str, expr: str) -> pd.DataFrame:
    """One query's series -> long rows (``series``, ``time`` in seconds, value, ``label_*``); the series
    and label columns are categoricals (one string per series, not per sample)."""
    where = f"data.queries.{target}={expr!r}"
    seen: dict[str, dict[str, Any]] = {}
    kept: list[Series] = []
    for metric, times, values in result:
        missing = [lb for lb in source.series_labels if lb not in metric]
        if missing:
            raise ZooError(
                f"{where}: a result series has no label {missing[0]!r} (data.series_labels={source.series_labels}; "
                f"its labels: {', '.join(sorted(metric)) or 'none'}): keep it in the expression (e.g. avg by ({', '.join(source.series_labels)}) (...))"
            )
        sid = ",".join(str(metric[lb]) for lb in source.series_labels)
        if sid in seen:
            raise ZooError(
                f"{where}: two result series share the id {sid!r} (labels {metric} and {seen[sid]}): aggregate them, "
                f"e.g. max by ({', '.join(source.series_labels)}) (...), or add a label to data.series_labels"
            )
        seen[sid] = metric
        if len(times):
            kept.append((metric, times, values))
    ids = [",".join(str(m[lb]) for lb in source.series_labels) for m, _, _ in kept]
    codes = np.repeat(np.arange(len(kept)), [len(t) for _, t, _ in kept])

    def column(names: list[str]) -> pd.Categorical:
        uniq, inverse = np.unique(np.array(names, dtype=object), return_inverse=True) if names else ([], [])
        return pd.Categorical.from_codes(np.asarray(inverse, dtype=np.int64)[codes], categories=list(uniq))

    out: dict[str, Any] = {
        "series": column(ids),
        "time": np.concatenate([t for _, t, _ in kept]) if kept else np.zeros(0),
        "value": np.concatenate([v for _, _, v in kept]) if kept else np.zeros(0),
    }
    for lb in source.series_labels:
        out[LABEL_PREFIX + lb] = column([str(m[lb]) for m, _, _ in kept])
    return pd.DataFrame(out)


def check_spacing(frame: pd.DataFrame, source: Source, target: str, expr: str) -> None:
    """A sample off the step grid means the server did not answer at data.step (a proxy rewriting the
    step, or a recording rule queried at its own resolution)."""
    off = np.abs((frame["time"].to_numpy() - source.start) / source.step - np.round((frame["time"].to_numpy() - source.start) / source.step))  # fmt: skip
    t = frame["time"].to_numpy()
    if len(t) and (off > 1e-6).any():
        i = int(np.argmax(off > 1e-6))
        raise ZooError(
            f"data.queries.{target}={expr!r}: sample at {t[i]:.3f} is off the data.step={source.step:g}s grid from "
            f"{source.start:.0f}: the server answered at another step"
        )
    if len(t) > 1:
        diffs = np.diff(t)[frame["series"].to_numpy()[1:] == frame["series"].to_numpy()[:-1]]
        if len(diffs) and diffs.min() < source.step - 1e-6:
            raise ZooError(
                f"data.queries.{target}={expr!r}: samples {diffs.min():g}s apart, closer than data.step={source.step:g}s"
            )


# -- the pull ---------------------------------------------------------------------------------------------
def count_series(session: Any, source: Source, target: str) -> int:
    """How many series `target`'s expression gives at the end of the range (0 on any failure: the plan
    then falls back to ``max_points``; the range queries report real errors)."""
    try:
        r = session.post(f"{source.url}/api/v1/query", timeout=source.pull.timeout,
                         data={"query": f"count({source.queries[target]})", "time": f"{source.end:.3f}"})  # fmt: skip
        result = json.loads(r.content)["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0
    except Exception:
        return 0


def plan(source: Source, folder: Path) -> int:
    """Steps per chunk: what `folder`'s pull.json planned (a resumed pull keeps its parts' chunks), else
    ``max_samples`` over the largest series count, at most ``max_points``; written to pull.json."""
    key_file = folder / "pull.json"
    if key_file.is_file():
        saved = json.loads(key_file.read_text())
        if saved.get("key") != source.key():
            raise ZooError(f"{folder}: a pull folder of other settings (remove it or use another cache_dir)")
        return int(saved["chunk_steps"])
    session = _session()
    series = max([count_series(session, source, t) for t in source.queries] + [1])
    steps = max(1, min(int(source.pull.max_points), int(source.pull.max_samples) // series))
    key_file.write_text(json.dumps({"key": source.key(), "chunk_steps": steps, "series": series}, indent=1))
    return steps


def part_path(folder: Path, target: str, k: int) -> Path:
    return folder / f"{target}-{k:05d}.parquet"


def pull(source: Source, folder: str | Path, progress: bool = False) -> Path:
    """Every (target, chunk) query of `source` into `folder` (one Parquet part each, skipping those already
    there), `parallel` at a time. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = source.chunks(plan(source, folder))
    todo = [
        (t, k) for t in source.queries for k in range(len(chunks)) if not part_path(folder, t, k).is_file()
    ]
    if not todo:
        return folder
    local = __import__("threading").local()

    def one(job: tuple[str, int]) -> None:
        target, k = job
        if not hasattr(local, "session"):
            local.session = _session()
        expr = source.queries[target]
        first, last = chunks[k]
        frame = result_frame(
            query_range(local.session, source, expr, first, last, target), source, target, expr
        )
        check_spacing(frame, source, target, expr)
        out = part_path(folder, target, k)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        # Dictionary pages for the per-series columns only: hashing every float sample cost more than it saved.
        frame.to_parquet(
            tmp, index=False, use_dictionary=["series", *(LABEL_PREFIX + lb for lb in source.series_labels)]
        )
        tmp.replace(out)  # atomic: a killed pull never leaves a half part that looks done

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=source.pull.parallel) as pool:
        # Chunk-major order: parts land roughly in time order, so a killed pull resumes near where it was.
        todo.sort(key=lambda job: (job[1], list(source.queries).index(job[0])))
        for i, _ in enumerate(pool.map(one, todo)):
            if progress and (i + 1) % 20 == 0:
                print(f"[zoo] prometheus pull: {i + 1}/{len(todo)} queries ({time.perf_counter() - t0:.1f}s)")
    return folder


def read_pulled(source: Source, folder: str | Path) -> pd.DataFrame:
    """The pulled parts as the zoo's long frame (``timestamp``, ``series``, targets, ``label_*`` as
    categoricals): one dense [series, step] array per target (NaN where a target has no sample), rows
    where any target has one; an expression with no sample in the whole range is an error naming it."""
    folder = Path(folder)
    chunks = source.chunks(plan(source, folder))
    label_cols = [LABEL_PREFIX + lb for lb in source.series_labels]
    total = int(np.floor((source.end - source.start) / source.step + 1e-9)) + 1
    ids: dict[str, int] = {}
    labels: dict[str, list[str]] = {}
    grids: dict[str, np.ndarray] = {}
    for target, expr in source.queries.items():
        parts = [pd.read_parquet(part_path(folder, target, k)) for k in range(len(chunks))]
        if not any(len(p) for p in parts):
            raise ZooError(
                f"data.queries.{target}={expr!r}: no samples between data.start and data.end at {source.url} "
                "(check the expression in Prometheus' graph page, the time range and the label names)"
            )
        cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for part in parts:
            if not len(part):
                continue
            for rec in part.drop_duplicates("series")[["series", *label_cols]].itertuples(
                index=False, name=None
            ):
                if rec[0] not in ids:
                    ids[rec[0]] = len(ids)
                    labels[rec[0]] = [str(v) for v in rec[1:]]
            row = part["series"].map(ids).to_numpy(np.int64)
            col = np.rint((part["time"].to_numpy() - source.start) / source.step).astype(np.int64)
            cells.append((row, col, part["value"].to_numpy(np.float64)))
        del parts
        grid = np.full((len(ids), total), np.nan)
        for row, col, value in cells:
            grid[row, col] = value
        grids[target] = grid
    n = len(ids)
    for target, grid in grids.items():  # series first seen by a later target: NaN rows for earlier ones
        if grid.shape[0] < n:
            grids[target] = np.vstack([grid, np.full((n - grid.shape[0], total), np.nan)])
    names = np.array(sorted(ids), dtype=object)
    order = np.array([ids[name] for name in names], dtype=np.int64)
    present = np.zeros((n, total), dtype=bool)
    for grid in grids.values():
        present |= ~np.isnan(grid[order])
    rows, cols = np.nonzero(present)  # series-major, time-ordered within a series
    # Nanoseconds as integers: pandas' float-seconds conversion cost more than the rest of the read.
    stamps = np.rint((source.start + cols * source.step) * 1e9).astype(np.int64).view("datetime64[ns]")
    frame = {"timestamp": pd.DatetimeIndex(stamps),
             "series": names[rows]}  # fmt: skip
    for target, grid in grids.items():
        frame[target] = grid[order][rows, cols]
    for i, col in enumerate(label_cols):
        values = np.array([labels[name][i] for name in names], dtype=object)
        frame[col] = pd.Categorical(values[rows])
    return pd.DataFrame(frame)


def load(source: Source, folder: str | Path, progress: bool = True) -> pd.DataFrame:
    """Pull what is missing, then read the frame."""
    pull(source, folder, progress=progress)
    return read_pulled(source, folder)
