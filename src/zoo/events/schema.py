"""Event schemas and vocabularies.

A schema lists the fields of an event: where each comes from (a raw column, or a calendar value derived
from a timestamp column, or a numeric column cut into buckets) and which *stream* it belongs to (each
stream gets its own encoder). Every field value becomes a string token; a field's vocabulary is built
from the training split and always starts with the same four special tokens, so the network can use
fixed ids for them whatever the field.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from zoo.core.errors import ZooError

PAD, UNK, BOS, EOC = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eoc>"]
# A missing raw value is a category of its own (BPI 2012 has thousands of events without a resource).
MISSING = "<na>"

DERIVATIONS = ("year", "month", "day", "weekday", "hour", "week", "since_prev", "since_start")
# Log-spaced edges (days) of the time-since-previous-event buckets: seconds to months.
SINCE_PREV_EDGES = [0.0, 1 / 1440, 10 / 1440, 1 / 24, 4 / 24, 1.0, 3.0, 7.0, 30.0]
# Edges (days) of the time-since-case-start buckets: how long a case has been open, minutes to months,
# finer past a day than SINCE_PREV_EDGES: 80% of Helpdesk cases last 31 to 53 days from first to last event.
SINCE_START_EDGES = [0.0, 1 / 1440, 10 / 1440, 1 / 24, 4 / 24, 0.5, 1.0, 2.0, 4.0, 7.0, 14.0, 21.0, 30.0, 60.0, 90.0]  # fmt: skip


@dataclass
class FieldSpec:
    name: str
    """Field name (also the metric name: val/acc/<name>)."""
    stream: str
    """Stream (encoder) the field belongs to."""
    column: str | None = None
    """Raw column the field reads (a key of data.columns, or a column of the log itself)."""
    derive: str | None = None
    """Calendar value of a timestamp column: year | month | day | weekday | hour | week | since_prev |
    since_start (time since the case's first event, bucketed)."""
    source: str = "timestamp"
    """The timestamp column `derive` reads."""
    bins: list[float] | None = None
    """Numeric column cut at these edges (value v goes to bucket i where bins[i] <= v < bins[i+1])."""
    id: bool = False
    """An identifier field: its vocabulary is capped at data.id_vocab_size (rarer ids -> <unk>)."""

    def __post_init__(self) -> None:
        if (self.column is None) == (self.derive is None):
            raise ZooError(f"schema field {self.name}: give exactly one of column or derive")
        if self.derive is not None and self.derive not in DERIVATIONS:
            raise ZooError(
                f"schema field {self.name}: derive={self.derive}, expected one of {', '.join(DERIVATIONS)}"
            )


@dataclass
class Schema:
    fields: list[FieldSpec]
    target: str
    """The field whose next value is "the next activity" in evaluation."""
    streams: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ZooError("schema: no fields")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ZooError(f"schema: duplicate field names in {names}")
        if self.target not in names:
            raise ZooError(f"schema: target field {self.target} is not one of the fields {names}")
        if not self.streams:
            self.streams = list(dict.fromkeys(f.stream for f in self.fields))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        try:
            fields = [FieldSpec(**f) for f in d["fields"]]
        except TypeError as err:
            raise ZooError(f"schema: bad field entry ({err})") from err
        except KeyError as err:
            raise ZooError("schema: missing key 'fields'") from err
        return cls(fields=fields, target=d.get("target") or fields[0].name)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [asdict(f) for f in self.fields], "target": self.target}

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def raw_columns(self) -> list[str]:
        """Columns of the (mapped) log the fields read, including timestamp sources."""
        cols = []
        for f in self.fields:
            cols.append(f.column if f.column is not None else f.source)
        return list(dict.fromkeys(cols))


def derive_scalar(kind: str, ts: pd.Timestamp) -> str:
    """One calendar value as a token; `derive_series` must agree with it (the synthetic floor relies on it)."""
    if kind == "year":
        return str(ts.year)
    if kind == "month":
        return str(ts.month)
    if kind == "day":
        return str(ts.day)
    if kind == "weekday":
        return str(ts.weekday())
    if kind == "hour":
        return str(ts.hour)
    if kind == "week":
        return str(ts.isocalendar()[1])
    raise ValueError(kind)


def since_prev_token(days: float) -> str:
    if days is None or (isinstance(days, float) and math.isnan(days)):
        return "start"
    return f"b{int(np.searchsorted(SINCE_PREV_EDGES, days, side='right'))}"


def since_start_token(days: float) -> str:
    return f"s{int(np.searchsorted(SINCE_START_EDGES, days, side='right'))}"


def derive_series(kind: str, ts: pd.Series, case: pd.Series) -> pd.Series:
    if kind == "since_prev":
        days = ts.groupby(case, sort=False).diff().dt.total_seconds() / 86400.0
        return days.map(since_prev_token)
    if kind == "since_start":
        days = (ts - ts.groupby(case, sort=False).transform("min")).dt.total_seconds() / 86400.0
        return days.map(since_start_token)
    if kind == "week":
        return ts.dt.isocalendar().week.astype(int).astype(str)
    attr = {"year": "year", "month": "month", "day": "day", "weekday": "weekday", "hour": "hour"}[kind]
    return getattr(ts.dt, attr).astype(int).astype(str)


def bucket_scalar(value: float, bins: list[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    i = int(np.searchsorted(np.asarray(bins, dtype=float), float(value), side="right"))
    if i == 0:
        return "<lo"
    if i == len(bins):
        return f">={bins[-1]:g}"
    return f"[{bins[i - 1]:g},{bins[i]:g})"


def bucket_series(values: pd.Series, bins: list[float], name: str) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        first = values[bad].iloc[0]
        raise ZooError(
            f"schema field {name}: {int(bad.sum())} values are not numbers (e.g. {first!r}) but the field has bins"
        )
    return numeric.map(lambda v: bucket_scalar(v, list(bins)))


def token_of(
    f: FieldSpec,
    record: dict[str, Any],
    prev_time: pd.Timestamp | None,
    case_start: pd.Timestamp | None = None,
) -> str:
    """The token of one field for one event given as a dict; agrees with `field_tokens`."""
    if f.derive == "since_start":
        start = record[f.source] if case_start is None else case_start
        return since_start_token((record[f.source] - start).total_seconds() / 86400.0)
    if f.derive == "since_prev":
        if prev_time is None:
            return since_prev_token(float("nan"))
        return since_prev_token((record[f.source] - prev_time).total_seconds() / 86400.0)
    if f.derive is not None:
        return derive_scalar(f.derive, record[f.source])
    value = record[f.column]
    if f.bins is not None:
        return bucket_scalar(value, list(f.bins))
    return MISSING if value is None else str(value)


def field_tokens(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """String token of every field for every event of a normalized log (case_id, timestamp, raw columns)."""
    out = {}
    for f in schema.fields:
        if f.derive is not None:
            out[f.name] = derive_series(f.derive, df[f.source], df["case_id"])
        elif f.bins is not None:
            out[f.name] = bucket_series(df[f.column], list(f.bins), f.name)
        else:
            col = df[f.column]
            out[f.name] = col.astype("string").fillna(MISSING).astype(str)
    return pd.DataFrame(out, index=df.index)


class Vocab:
    """Token <-> id for every field; ids 0-3 are <pad>, <unk>, <bos>, <eoc> in every field."""

    def __init__(self, tokens: dict[str, list[str]]):
        for name, toks in tokens.items():
            if list(toks[: len(SPECIALS)]) != SPECIALS:
                raise ZooError(f"vocabulary of field {name} does not start with {SPECIALS}")
        self.tokens = {k: list(v) for k, v in tokens.items()}
        self.index = {k: {t: i for i, t in enumerate(v)} for k, v in self.tokens.items()}

    @classmethod
    def build(
        cls, tokens: pd.DataFrame, schema: Schema, id_vocab_size: int | None = None, min_count: int = 1
    ) -> Vocab:
        vocab = {}
        for f in schema.fields:
            counts = Counter(tokens[f.name].tolist())
            # Most frequent first, ties by value: the same data always gives the same ids.
            ranked = [t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
            if f.id and id_vocab_size:
                ranked = ranked[: max(0, int(id_vocab_size) - len(SPECIALS))]
            vocab[f.name] = SPECIALS + ranked
        return cls(vocab)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.tokens.items()}

    def encode(self, tokens: pd.DataFrame, names: list[str]) -> tuple[np.ndarray, dict[str, int]]:
        """ids [n_events, n_fields] and, per field, how many values were unknown (mapped to <unk>)."""
        ids = np.empty((len(tokens), len(names)), dtype=np.int64)
        unknown = {}
        for j, name in enumerate(names):
            col = tokens[name].map(self.index[name])
            unknown[name] = int(col.isna().sum())
            ids[:, j] = col.fillna(UNK).to_numpy(dtype=np.int64)
        return ids, unknown

    def decode(self, name: str, i: int) -> str:
        return self.tokens[name][i]

    def to_json(self) -> str:
        return json.dumps(self.tokens, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        return cls(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def check_matches(self, sizes: dict[str, int], where: str) -> None:
        """Refuse a vocabulary that does not fit a network (different fields or sizes), in one line."""
        mine = self.sizes()
        if mine != sizes:
            diff = sorted(set(mine) ^ set(sizes)) or [k for k in mine if mine[k] != sizes.get(k)]
            raise ZooError(
                f"{where}: the vocabulary does not match the checkpoint (fields/sizes differ for {diff[:5]}): "
                "use the vocab.json saved with this checkpoint"
            )
