"""Server-metrics tables -> one clean long frame: load (Parquet/CSV/JSON or a known public trace),
map columns, validate, resample to a fixed step, fill short gaps, split series at long gaps, and add
calendar/lag/rolling features.

The frame every later stage sees has the columns ``series`` (str, one id per contiguous segment),
``host`` (str, the original series id), ``timestamp`` (datetime64), ``time_idx`` (int64 steps since a
global origin, so cutoffs compare across series), the targets and the covariates.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo.core.errors import ZooError

DEFAULT_TARGETS = ["cpu_percent", "memory_percent", "disk_percent", "load_average"]

# Column layouts of the public traces under ../shared/data/metrics (see SOURCES.md there).
ALIBABA_COLUMNS = ["machine_id", "time_stamp", "cpu_util_percent", "mem_util_percent", "mem_gps", "mkpi",
                   "net_in", "net_out", "disk_io_percent"]  # fmt: skip
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


# -- reading -----------------------------------------------------------------------------------------
def read_table(
    path: str | Path, fmt: str | None = None, read_kwargs: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read one Parquet/CSV/JSON(-lines) file, or every file of a glob/folder (a `source_file` column
    says which file each row came from)."""
    path = str(Path(path).expanduser())
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if len(files) == 1 and Path(files[0]).is_dir():
        files = sorted(
            str(p)
            for p in Path(files[0]).iterdir()
            if p.suffix.lower() in (".csv", ".parquet", ".json", ".jsonl", ".pq")
        )
    if not files or not all(Path(f).is_file() for f in files):
        raise ZooError(f"data.path={path}: no such file")
    frames = []
    for f in files:
        kind = (fmt or Path(f).suffix.lstrip(".")).lower()
        kwargs = dict(read_kwargs or {})
        if Path(f).stat().st_size == 0:  # pandas/pyarrow would say "no columns to parse" or "magic bytes"
            raise ZooError(
                f"data.path={f}: the file is empty (expected a table with a header row and samples)"
            )
        try:
            if kind in ("parquet", "pq"):
                frame = pd.read_parquet(f, **kwargs)
            elif kind in ("csv", "txt", "tsv"):
                if kwargs.get("sep") and len(str(kwargs["sep"])) > 1:
                    kwargs.setdefault("engine", "python")  # multi-char separators (Bitbrains ";\t")
                frame = pd.read_csv(f, **kwargs)
            elif kind in ("json", "jsonl", "ndjson"):
                lines = kwargs.pop("lines", kind != "json" or _looks_like_json_lines(f))
                frame = pd.read_json(f, lines=lines, **kwargs)
            else:
                raise ZooError(
                    f"data.path={f}: unknown format '{kind}' (expected parquet, csv or json; set data.format)"
                )
        except ZooError:
            raise
        except Exception as err:
            raise ZooError(
                f"data.path={f}: cannot read it as {kind} ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
            ) from err
        if len(files) > 1:
            frame["source_file"] = Path(f).stem
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _looks_like_json_lines(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1)
    return head != "["


def map_columns(df: pd.DataFrame, columns: dict[str, Any], where: str) -> pd.DataFrame:
    """Rename source columns to the zoo names. `columns` maps zoo name -> source column, e.g.
    ``{timestamp: ts, series: host, cpu_percent: cpu}``; missing source columns fail in one line."""
    rename = {}
    for zoo_name, source in (columns or {}).items():
        if source is None:
            continue
        if source not in df.columns:
            raise ZooError(
                f"{where}: column '{source}' (data.columns.{zoo_name}) not found; available columns: {', '.join(map(str, df.columns))}"
            )
        rename[source] = zoo_name
    out = df.rename(columns=rename)
    for zoo_name, source in (columns or {}).items():
        if source is not None and source != zoo_name and source in rename and zoo_name not in out.columns:
            out[zoo_name] = df[source]
    return out


def to_timestamps(values: pd.Series, unit: str | None, where: str, column: str = "timestamp") -> pd.Series:
    """Numbers are read as `unit` since the epoch (s by default); strings are parsed. `column` is the
    source column's name, for the error message."""
    if pd.api.types.is_datetime64_any_dtype(values):
        out = pd.to_datetime(values)
        return out.dt.tz_convert(None) if getattr(out.dt, "tz", None) is not None else out
    if pd.api.types.is_numeric_dtype(values):
        return pd.to_datetime(values, unit=unit or "s")
    try:
        return pd.to_datetime(values, utc=True).dt.tz_convert(None)
    except (ValueError, TypeError):
        pass  # parse element by element (slow) only to find the first bad value
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna()
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise ZooError(
            f"{where}: {int(bad.sum())} values of column '{column}' (data.columns.timestamp) are neither numbers "
            f"nor dates (first at row {row}: {values.iloc[row]!r}): expected dates such as 2024-01-31 09:00:00 "
            "or numbers since the epoch (data.timestamp_unit)"
        )
    return parsed.dt.tz_convert(None)


# -- known public traces --------------------------------------------------------------------------------
def load_alibaba(path: str | Path) -> pd.DataFrame:
    """machine_usage.csv of the Alibaba 2018 trace: no header, seconds since trace start."""
    df = pd.read_csv(Path(path).expanduser(), header=None, names=ALIBABA_COLUMNS)
    return pd.DataFrame({
        "timestamp": pd.Timestamp("2018-01-01") + pd.to_timedelta(df["time_stamp"], unit="s"),
        "series": df["machine_id"].astype(str),
        "cpu_percent": df["cpu_util_percent"].astype(float),
        "memory_percent": df["mem_util_percent"].astype(float),
        "disk_percent": df["disk_io_percent"].astype(float),
        "net_in": df["net_in"].astype(float),
        "net_out": df["net_out"].astype(float),
    })  # fmt: skip


def load_bitbrains(path: str | Path) -> pd.DataFrame:
    """A folder of Bitbrains GWA-T-12 VM files (one VM per file, separator ';\\t', unix seconds)."""
    folder = Path(path).expanduser()
    files = sorted(folder.glob("*.csv"), key=lambda p: (len(p.stem), p.stem)) if folder.is_dir() else [folder]
    if not files or not files[0].is_file():
        raise ZooError(f"data.path={folder}: no Bitbrains .csv files there")
    frames = []
    for f in files:
        df = pd.read_csv(f, sep=";\t", engine="python")
        df.columns = [c.strip() for c in df.columns]
        frames.append(pd.DataFrame({
            "timestamp": pd.to_datetime(df["Timestamp [ms]"], unit="s"),
            "series": f"vm{f.stem}",
            "cpu_percent": df["CPU usage [%]"].astype(float),
            "memory_percent": 100.0 * df["Memory usage [KB]"] / df["Memory capacity provisioned [KB]"].replace(0, np.nan),
            "disk_read_kbs": df["Disk read throughput [KB/s]"].astype(float),
            "disk_write_kbs": df["Disk write throughput [KB/s]"].astype(float),
            "net_rx_kbs": df["Network received throughput [KB/s]"].astype(float),
            "net_tx_kbs": df["Network transmitted throughput [KB/s]"].astype(float),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def load_nab(path: str | Path, pattern: str = "*.csv") -> pd.DataFrame:
    """NAB realAWSCloudwatch: one univariate `value` series per file; the file stem is the series id."""
    folder = Path(path).expanduser()
    files = sorted(folder.glob(pattern))
    if not files:
        raise ZooError(f"data.path={folder}: no files matching {pattern}")
    frames = [pd.read_csv(f).assign(series=f.stem) for f in files]
    df = pd.concat(frames, ignore_index=True)
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime(df["timestamp"]),
            "series": df["series"],
            "value": df["value"].astype(float),
        }
    )


def load_ett(path: str | Path) -> pd.DataFrame:
    df = pd.read_csv(Path(path).expanduser())
    out = df.rename(columns={"date": "timestamp"})
    out["timestamp"] = pd.to_datetime(out["timestamp"])
    out["series"] = "ETTh1"
    return out


# -- synthetic ----------------------------------------------------------------------------------------------
def synthetic_hosts(
    n_hosts: int = 6,
    days: float = 14.0,
    step_minutes: int = 30,
    noise: float = 2.0,
    burst_rate: float = 0.002,
    seed: int = 0,
    start: str = "2024-01-01",
) -> pd.DataFrame:
    """Multi-host metrics with daily and weekly seasonality, slow trends, rare bursts and Gaussian noise
    of known standard deviation `noise` (percentage points; scaled for load average). The columns
    ``*_clean`` hold the noise-free signal, so a test can compare the model's error with the floor."""
    rng = np.random.default_rng(seed)
    n = int(days * 24 * 60 / step_minutes)
    t = np.arange(n)
    timestamps = pd.Timestamp(start) + pd.to_timedelta(t * step_minutes, unit="min")
    hours = (t * step_minutes / 60.0) % 24
    dow = ((t * step_minutes / 60.0) // 24) % 7
    daily = np.sin(2 * np.pi * (hours - 8) / 24)  # busiest in the afternoon
    weekly = np.where(dow >= 5, -1.0, 0.3)  # quieter weekends
    names = ["cpu_percent", "memory_percent", "disk_percent", "load_average"]
    # Filled in place, host by host (the same random draws in the same order as one frame per host
    # concatenated, without holding the fleet twice).
    cols = {f"{name}{suffix}": np.empty(n_hosts * n) for name in names for suffix in ("", "_clean")}
    for h in range(n_hosts):
        rows = slice(h * n, (h + 1) * n)
        base = rng.uniform(20, 50)
        amp = rng.uniform(8, 20)
        trend = rng.uniform(-8, 8) * t / n  # percentage points of drift over the whole span
        bursts = np.zeros(n)
        starts = np.flatnonzero(rng.random(n) < burst_rate)
        for s in starts:  # short exponential decays, as after a deploy or batch job
            length = min(n - s, 8)
            bursts[s : s + length] += rng.uniform(10, 25) * np.exp(-np.arange(length) / 3)
        cpu = np.clip(base + amp * daily + 5 * weekly + trend + bursts, 0, 100)
        mem = np.clip(base * 0.8 + 10 + 0.4 * amp * daily + 2 * weekly + 0.5 * trend, 0, 100)
        disk = np.clip(30 + 0.005 * t * (1 + h % 3) + 3 * daily, 0, 100)
        load = np.clip(cpu / 25.0, 0, None)
        clean = {"cpu_percent": cpu, "memory_percent": mem, "disk_percent": disk, "load_average": load}
        noise_sd = {
            "cpu_percent": noise,
            "memory_percent": noise,
            "disk_percent": noise,
            "load_average": noise / 25.0,
        }
        for name, value in clean.items():
            cols[name][rows] = value + rng.normal(0, noise_sd[name], n)
            cols[f"{name}_clean"][rows] = value
    # Zero-padded so that name order is generation order: a fleet of 500 sorted by series is already
    # on the grid and skips the per-series resample (host100 would otherwise sort before host11).
    width = max(2, len(str(n_hosts - 1)))
    series = np.repeat(np.array([f"host{h:0{width}d}" for h in range(n_hosts)], dtype=object), n)
    frame = {"timestamp": np.tile(timestamps.to_numpy(), n_hosts), "series": series, **cols}
    return pd.DataFrame(frame, copy=False)


# -- validation and regularization -----------------------------------------------------------------------
def validate(df: pd.DataFrame, targets: list[str], covariates: list[str], where: str) -> pd.DataFrame:
    """One-line errors for what would otherwise fail deep inside pandas or pytorch-forecasting."""
    if df.empty:
        raise ZooError(f"{where}: the table has no rows (expected samples with a timestamp and the targets)")
    needed = ["timestamp", "series", *targets, *covariates]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = " (map it with data.columns.<name>=<source column>)"
        raise ZooError(
            f"{where}: missing column(s) {', '.join(missing)}{hint}; available columns: {', '.join(map(str, df.columns))}"
        )
    for name in [*targets, *covariates]:
        col = df[name]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            converted = pd.to_numeric(col, errors="coerce")
            bad = col[converted.isna() & col.notna()]
            if len(bad):
                raise ZooError(
                    f"{where}: target/covariate column '{name}' is not numeric (e.g. value {bad.iloc[0]!r} in row {bad.index[0]}): expected numbers"
                )
            df[name] = converted
    for name in targets:
        # NaNs are gaps (filled up to data.max_gap); a target with no value at all would only surface as
        # "no rows left after resampling".
        if df[name].isna().all():
            raise ZooError(
                f"{where}: target column '{name}' has no values (all {len(df)} rows are NaN): expected numbers"
            )
    df["series"] = df["series"].astype(str)
    if strictly_increasing(df["series"], df["timestamp"]):
        return df  # no repeated timestamp is possible (the hash-based check costs a fleet-sized table)
    dup = df.duplicated(["series", "timestamp"], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        named = int((dup & (df["series"] == row["series"])).sum())
        n_series = int(df.loc[dup, "series"].nunique())
        others = f"; {int(dup.sum())} in {n_series} series" if n_series > 1 else ""
        raise ZooError(
            f"{where}: duplicated timestamp {row['timestamp']} in series '{row['series']}' ({named} rows with a "
            f"repeated timestamp in that series{others}): set data.duplicates=mean to average them"
        )
    return df


def strictly_increasing(series: pd.Series, timestamp: pd.Series) -> bool:
    """Whether the rows are sorted by series and, within each series, by strictly increasing timestamp."""
    if not series.is_monotonic_increasing or not pd.api.types.is_datetime64_dtype(timestamp):
        return False
    s = series.to_numpy()
    same = s[1:] == s[:-1]
    t = timestamp.to_numpy()
    return bool((t[1:][same] > t[:-1][same]).all())


def already_regular(df: pd.DataFrame, freq: pd.Timedelta, columns: list[str]) -> bool:
    """Whether resampling would return `df` unchanged: rows sorted by series, one sample at every bin
    of `step` (on resample's default origin, midnight of each series' first day), no missing value,
    float64 columns (the bins' means are then the samples themselves)."""
    if df.empty or not all(df[c].dtype == np.float64 for c in columns):
        return False
    if not df["series"].is_monotonic_increasing or not pd.api.types.is_datetime64_dtype(df["timestamp"]):
        return False
    if any(np.isnan(df[c].to_numpy()).any() for c in columns):  # column by column: df[columns] is a copy
        return False
    s = df["series"].to_numpy()
    t = df["timestamp"].to_numpy()
    same = s[1:] == s[:-1]
    step = np.timedelta64(freq.value, "ns")
    if not ((t[1:] - t[:-1])[same] == step).all():
        return False
    firsts = np.flatnonzero(np.r_[True, ~same])
    day = t[firsts].astype("datetime64[D]").astype(t.dtype)
    return bool((((t[firsts] - day) % step) == np.timedelta64(0, "ns")).all())


def regularize(
    df: pd.DataFrame, step: str, columns: list[str], max_gap_steps: int, where: str
) -> pd.DataFrame:
    """Resample every series to `step` (mean of the samples in each bin), forward-fill gaps up to
    `max_gap_steps` bins, and split a series where a longer gap remains, so no window ever spans a hole.
    Data already on the grid (a generated fleet, a clean export) is taken as it is: the same frame, without
    a resample per series (tests/tft/test_fleet.py compares both paths)."""
    try:
        freq = pd.Timedelta(step)
    except ValueError as err:
        raise ZooError(f"data.step={step}: not a time step (e.g. 5min, 1h)") from err
    if already_regular(df, freq, columns):
        series = df["series"].to_numpy()
        out_cols = {"timestamp": df["timestamp"].to_numpy(), **{c: df[c].to_numpy() for c in columns}}
        return pd.DataFrame({**out_cols, "host": series, "series": series}, copy=False)
    return resample_series(df, freq, columns, max_gap_steps, where, step)


def resample_series(
    df: pd.DataFrame, freq: pd.Timedelta, columns: list[str], max_gap_steps: int, where: str, step: str
) -> pd.DataFrame:
    """`regularize`, one series at a time."""
    out = []
    for host, part in df.groupby("series", sort=True):
        part = part.set_index("timestamp").sort_index()
        binned = part[columns].resample(freq).mean()
        if max_gap_steps > 0:
            binned = binned.ffill(limit=max_gap_steps)
        hole = binned.isna().any(axis=1).to_numpy()
        segment = np.cumsum(hole)  # a new segment after every remaining hole
        binned = binned.assign(_seg=segment)[~hole]
        for k, (_, seg) in enumerate(binned.groupby("_seg", sort=True)):
            seg = seg.drop(columns="_seg").reset_index()
            seg["host"] = str(host)
            seg["series"] = str(host) if k == 0 else f"{host}#{k}"
            out.append(seg)
    if not out:
        raise ZooError(f"{where}: no rows left after resampling to {step}")
    return pd.concat(out, ignore_index=True)


def add_time_index(
    df: pd.DataFrame, step: str, origin: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.Timestamp]:
    freq = pd.Timedelta(step)
    origin = pd.Timestamp(origin) if origin is not None else df["timestamp"].min().floor(freq)
    df["time_idx"] = ((df["timestamp"] - origin) // freq).astype(np.int64)
    return df, origin


def add_calendar(df: pd.DataFrame, features: list[str]) -> list[str]:
    """Known-in-advance calendar covariates; cyclical encodings avoid the 23 -> 0 jump."""
    ts = df["timestamp"]
    hour = ts.dt.hour + ts.dt.minute / 60.0
    made = []
    for name in features:
        if name == "hour":
            df["hour"] = hour
        elif name == "weekday":
            df["weekday"] = ts.dt.weekday.astype(float)
        elif name == "hour_sin":
            df["hour_sin"] = np.sin(2 * np.pi * hour / 24)
        elif name == "hour_cos":
            df["hour_cos"] = np.cos(2 * np.pi * hour / 24)
        elif name == "weekday_sin":
            df["weekday_sin"] = np.sin(2 * np.pi * (ts.dt.weekday + hour / 24) / 7)
        elif name == "weekday_cos":
            df["weekday_cos"] = np.cos(2 * np.pi * (ts.dt.weekday + hour / 24) / 7)
        elif name == "is_weekend":
            df["is_weekend"] = (ts.dt.weekday >= 5).astype(float)
        else:
            raise ZooError(
                f"data.calendar: unknown feature '{name}' (hour, weekday, hour_sin, hour_cos, weekday_sin, weekday_cos, is_weekend)"
            )
        made.append(name)
    return made


def add_lags(
    df: pd.DataFrame, targets: list[str], lags: list[int], rolling: list[int]
) -> tuple[list[str], int]:
    """Lagged targets and trailing rolling mean/std (ending at the current step, so they only use the
    past). Returns the new column names and how many leading rows per series lack a value."""
    made = []
    by = df.groupby("series", sort=False)
    for name in targets:
        for lag in lags:
            col = f"{name}_lag{lag}"
            df[col] = by[name].shift(lag)
            made.append(col)
        for window in rolling:
            mean, std = f"{name}_mean{window}", f"{name}_std{window}"
            df[mean] = by[name].transform(lambda s, w=window: s.rolling(w).mean())
            df[std] = by[name].transform(lambda s, w=window: s.rolling(w).std())
            made += [mean, std]
    warmup = max([*lags, *[w - 1 for w in rolling], 0])
    return made, warmup


# Column of the single target of a channel-independent frame, and the static categorical naming the channel.
CHANNEL_VALUE = "value"
CHANNEL = "channel"


def melt_channels(frame: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """One series per (series, target): ``series`` becomes ``<series>/<target>``, the target's values go to
    ``value`` and its name to ``channel``; every other column is repeated. The TFT then learns one
    univariate model shared by all channels (channel independence, as in PatchTST and DLinear)."""
    rest = [c for c in frame.columns if c not in targets]
    parts = []
    for name in targets:
        part = frame[rest].copy()
        part[CHANNEL_VALUE] = frame[name].to_numpy()
        part[CHANNEL] = name
        part["series"] = frame["series"].astype(str) + "/" + name
        parts.append(part)
    return pd.concat(parts, ignore_index=True).sort_values(["series", "time_idx"]).reset_index(drop=True)


def steps_per(period: str, step: str) -> int:
    return max(1, int(round(pd.Timedelta(period) / pd.Timedelta(step))))


def check_lengths(df: pd.DataFrame, min_length: int, where: str, drop_short: bool) -> pd.DataFrame:
    """Series shorter than encoder+prediction give no window; say which instead of an empty dataset."""
    lengths = df.groupby("series", sort=True).size()
    short = lengths[lengths < min_length]
    if len(short) and not drop_short:
        name, n = short.index[0], int(short.iloc[0])
        raise ZooError(
            f"{where}: series '{name}' has {n} steps, shorter than encoder_length+prediction_length={min_length} "
            f"({len(short)} such series): lower the lengths or set data.drop_short_series=true"
        )
    if not len(short):
        return df  # a fleet-sized copy for nothing otherwise
    kept = df[df["series"].isin(lengths.index[lengths >= min_length])]
    if kept.empty:
        raise ZooError(f"{where}: every series is shorter than encoder_length+prediction_length={min_length}")
    return kept.reset_index(drop=True)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


def seasonal_lag(horizon: int, season: int) -> int:
    """Smallest multiple of the season at least the horizon: the seasonal-naive forecast for step h uses
    the value that many steps back, so it never peeks past the forecast origin."""
    return season * max(1, math.ceil(horizon / season))
