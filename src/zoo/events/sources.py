"""Real event logs: CSV / Parquet / XES (plain or .gz) -> one normalized table.

The normalized table has ``case_id`` (str), ``timestamp`` (UTC datetime) and the raw columns the schema
reads, ordered by case (in order of case start) and by time within a case (ties keep file order).
`data.columns` maps the names the schema uses to the log's own column names, e.g.
``{case_id: CaseID, timestamp: CompleteTimestamp, activity: ActivityID}``.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pandas as pd

from zoo.core.errors import ZooError


def _strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_xes(path: Path, setting: str = "data.path") -> pd.DataFrame:
    """Events of an XES log, with the same column naming as ../shared/data/events (see its README):
    trace ``concept:name`` -> case_id, event concept:name -> activity, time:timestamp -> timestamp,
    org:resource -> resource, lifecycle:transition -> lifecycle, other event keys verbatim, trace keys as
    ``case:<key>``. Streams the file (iterparse), so large logs do not need a DOM in memory."""
    rename = {
        "concept:name": "activity",
        "time:timestamp": "timestamp",
        "org:resource": "resource",
        "lifecycle:transition": "lifecycle",
    }
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    trace_attrs: dict[str, Any] = {}
    event: dict[str, Any] | None = None
    in_trace = False
    trace_rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rb") as fh:
            for kind, elem in ET.iterparse(fh, events=("start", "end")):
                tag = _strip_ns(elem.tag)
                if kind == "start":
                    if tag == "trace":
                        in_trace, trace_attrs, trace_rows = True, {}, []
                    elif tag == "event":
                        event = {}
                    continue
                if tag == "event":
                    trace_rows.append(event or {})
                    event = None
                    elem.clear()
                elif tag == "trace":
                    case = trace_attrs.pop("concept:name", None)
                    extra = {f"case:{k}": v for k, v in trace_attrs.items()}
                    rows.extend({"case_id": case, **r, **extra} for r in trace_rows)
                    in_trace = False
                    elem.clear()
                elif "key" in elem.attrib and in_trace:
                    key, value = elem.attrib["key"], elem.attrib.get("value")
                    if event is not None:
                        event[rename.get(key, key)] = value
                    elif tag != "global":
                        trace_attrs[key] = value
    except (ET.ParseError, OSError, EOFError) as err:
        raise ZooError(f"{setting}={path}: not a readable XES file ({err})") from err
    return pd.DataFrame(rows)


def read_table(path: str | Path, key: str = "data.path") -> pd.DataFrame:
    """Read an event log; `key` is the setting that named the file (errors say which one to fix)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ZooError(f"{key}={p}: no such file")
    name = p.name.lower()
    try:
        if name.endswith((".xes", ".xes.gz")):
            return read_xes(p, key)
        if name.endswith(".parquet"):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(p, dtype=str, keep_default_na=True)
    except ZooError:
        raise
    except pd.errors.EmptyDataError as err:
        raise ZooError(f"{key}={p}: the event log is empty (expected a header row and events)") from err
    except Exception as err:
        raise ZooError(
            f"{key}={p}: cannot read ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        ) from err
    raise ZooError(f"{key}={p}: unknown format, expected .csv, .csv.gz, .parquet, .xes or .xes.gz")


def parse_timestamps(values: pd.Series, column: str, where: str) -> pd.Series:
    """UTC timestamps; offsets may differ row to row (DST), so parse with utc=True."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    else:
        ts = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = ts.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ZooError(
            f"{where}: {int(bad.sum())} timestamps in column '{column}' cannot be parsed "
            f"(first at row {row}: {values.iloc[row]!r}): expected dates such as 2024-01-31T09:00:00Z"
        )
    return ts


def normalize(
    raw: pd.DataFrame,
    columns: dict[str, str],
    needed: list[str],
    where: str,
    time_columns: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Map, check and order a raw log: the one place bad input becomes a one-line error."""
    if raw.empty:
        raise ZooError(f"{where}: the event log is empty (no events)")
    mapping = {
        "case_id": "case_id",
        "timestamp": "timestamp",
        **{k: v for k, v in (columns or {}).items() if v},
    }
    out = {}
    for name in dict.fromkeys(["case_id", "timestamp", *needed]):
        col = mapping.get(name, name)
        if col not in raw.columns:
            how = (
                f"mapped by data.columns.{name}"
                if name in (columns or {})
                else f"set data.columns.{name}=<column>"
            )
            raise ZooError(
                f"{where}: column '{col}' ({how}) not found; the log has columns {list(raw.columns)}"
            )
        out[name] = raw[col]
    df = pd.DataFrame(out).reset_index(drop=True)
    if df["case_id"].isna().any():
        raise ZooError(
            f"{where}: {int(df['case_id'].isna().sum())} events have no case id (column '{mapping['case_id']}')"
        )
    df["case_id"] = df["case_id"].astype(str)
    df["timestamp"] = parse_timestamps(df["timestamp"], mapping["timestamp"], where)
    for name in time_columns:
        if name != "timestamp":
            df[name] = parse_timestamps(df[name], mapping.get(name, name), where)
    df["_row"] = range(len(df))
    start = df.groupby("case_id", sort=False)["timestamp"].transform("min")
    df = df.assign(_start=start).sort_values(["_start", "case_id", "timestamp", "_row"], kind="mergesort")
    return df.drop(columns=["_start", "_row"]).reset_index(drop=True)
