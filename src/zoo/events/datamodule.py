"""Event logs -> (source window, target window) samples, in the zoo DataModule shape.

A *sample* is a split point ``t`` inside a case: the source is the case's events before ``t`` (at most
``src_seq_len``, the most recent ones, right-padded), the targets are the events from ``t`` on (at most
``tgt_seq_len``), followed by an end-of-case token ``<eoc>`` where the case ends inside the window (real
logs; the synthetic log has open-ended timelines and no end token). Every prefix of >= 1 event of every
case is a sample, so target position 0 of the samples is exactly the next-activity evaluation protocol.

`prepare_data` writes, once per distinct setting, ``cache_dir/events/<name>-<fingerprint>/`` holding
``arrays.npz`` (token ids, time gaps, case bounds, split points), ``vocab.json`` and ``manifest.json``
(written last; a folder without it is rebuilt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from zoo.core.datamodule import ZooDataModule, fingerprint
from zoo.core.errors import ZooError
from zoo.events.schema import BOS, EOC, PAD, Schema, Vocab, field_tokens
from zoo.events.sources import normalize, read_table

SPLITS = ("train", "val", "test")


def plain(value: Any) -> Any:
    """Hydra passes DictConfig/ListConfig; settings must be JSON-able and hashable into a fingerprint."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def collate_batch(batch: Any) -> Any:
    """`EventWindows.__getitems__` already returns a batch; the DataLoader must not re-collate it."""
    return batch


class EventWindows(Dataset):
    """Samples of one split, built a whole batch at a time with numpy indexing (no per-sample Python)."""

    def __init__(
        self,
        ids: np.ndarray,
        dt: np.ndarray,
        case_start: np.ndarray,
        t: np.ndarray,
        end: np.ndarray,
        eoc: np.ndarray,
        src_len: int,
        tgt_len: int,
    ):
        self.ids, self.dt, self.case_start = ids, dt, case_start
        self.t, self.end, self.eoc = t, end, eoc
        self.S, self.T = int(src_len), int(tgt_len)

    def __len__(self) -> int:
        return len(self.t)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        t, end, eoc = self.t[idx], self.end[idx], self.eoc[idx]
        n_last = len(self.ids) - 1
        # t - 1 is always inside the case (t = case end for the end-of-case sample)
        length = np.minimum(self.S, t - self.case_start[t - 1])
        j = np.arange(self.S)
        src_idx = t[:, None] - length[:, None] + j[None, :]
        src = np.where((j[None, :] < length[:, None])[..., None], self.ids[np.clip(src_idx, 0, n_last)], PAD)
        k = np.arange(self.T)
        tgt_idx = t[:, None] + k[None, :]
        is_event = tgt_idx < end[:, None]
        tgt = np.where(is_event[..., None], self.ids[np.clip(tgt_idx, 0, n_last)], PAD)
        tgt[(tgt_idx == end[:, None]) & eoc[:, None]] = EOC
        tgt_in = np.concatenate([np.full_like(tgt[:, :1], BOS), tgt[:, :-1]], axis=1)
        dt = np.where(is_event, self.dt[np.clip(tgt_idx, 0, n_last)], np.nan)
        return {
            "src": torch.from_numpy(src),
            "src_len": torch.from_numpy(length),
            "tgt_in": torch.from_numpy(tgt_in),
            "tgt": torch.from_numpy(tgt),
            "dt": torch.from_numpy(dt.astype(np.float32)),
            # Counted here, on the host: the Throughput callback needs it without a device sync.
            "n_events": int((tgt[..., 0] != PAD).sum()),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: (v[0] if isinstance(v, torch.Tensor) else v) for k, v in self.__getitems__([i]).items()}

    def with_target_len(self, tgt_len: int) -> EventWindows:
        return EventWindows(self.ids, self.dt, self.case_start, self.t, self.end, self.eoc, self.S, tgt_len)


def first_flagged(flags: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each index in `t`, the first index >= it where `flags` is true (``len(flags)`` if none)."""
    hits = np.flatnonzero(flags)
    return np.append(hits, len(flags))[np.searchsorted(hits, t)]


def _case_bounds(case_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per event, the index of its case's first event and one past its last (cases are contiguous)."""
    codes = pd.factorize(case_ids)[0]
    n = len(codes)
    new = np.r_[True, codes[1:] != codes[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    run = np.cumsum(new) - 1
    return starts[run], ends[run]


class EventDataModule(ZooDataModule):
    """Event-sequence data for the events family.

    Args (besides the shared loader settings of `ZooDataModule`):
        source: ``synthetic`` (HR/timesheet generator) | ``file`` (CSV / Parquet / XES at ``path``).
        path: the event log (``source=file``).
        columns: the schema's column names -> the log's, e.g. ``{case_id: CaseID, activity: ActivityID}``.
        schema: ``{target: <field>, fields: [{name, stream, column | derive, ...}]}`` (see schema.py).
        split: ``column`` (the log's ``split_column``: train/val/test per case), ``case_start`` (cases
            ordered by start, ``fractions``), ``time`` (every case cut at time quantiles, ``fractions``)
            or ``weeks`` (every ``val_every``-th week of the timeline is validation; the synthetic default).
        src_seq_len / tgt_seq_len: events in the source and target windows.
        id_vocab_size: cap (incl. 4 special tokens) of the vocabulary of fields marked ``id``.
        end_token: add ``<eoc>`` after a case's last event (the "end of case" prediction).
        train_from_val: the earliest fraction (by start) of the validation cases that joins training
            (``column``/``case_start`` splits): on a drifting log the newest cases are the most like
            the test split's; the later validation cases still choose the checkpoint. 0: the benchmark
            protocol as published.
        recency_half_life_days: training samples are drawn with weight 0.5 ** (age / half-life), the age
            being the days between their case's start and the newest training case's start (null:
            uniform shuffling).
        synthetic: generator settings (see `zoo.events.synthetic.generate_hr`).
    """

    family = "events"

    def __init__(
        self,
        source: str = "synthetic",
        path: str | None = None,
        columns: dict[str, str] | None = None,
        schema: dict[str, Any] | None = None,
        split: str = "time",
        split_column: str = "split",
        val_every: int = 5,
        fractions: list[float] | tuple[float, ...] = (0.64, 0.16, 0.2),
        src_seq_len: int = 20,
        tgt_seq_len: int = 20,
        id_vocab_size: int | None = 100,
        end_token: bool = True,
        train_from_val: float = 0.0,
        recency_half_life_days: float | None = None,
        synthetic: dict[str, Any] | None = None,
        max_events: int | None = None,
        name: str = "events",
        **loader_kwargs: Any,
    ):
        super().__init__(**loader_kwargs)
        if source not in ("synthetic", "file"):
            raise ZooError(f"data.source={source}: expected synthetic or file")
        if split not in ("column", "case_start", "time", "weeks"):
            raise ZooError(f"data.split={split}: expected column, case_start, time or weeks")
        if source == "file" and not path:
            raise ZooError("data.source=file needs data.path (a .csv, .parquet or .xes event log)")
        if not schema:
            raise ZooError("data.schema is missing (pick a data=events/... config, which includes one)")
        for key, value in (("data.src_seq_len", src_seq_len), ("data.tgt_seq_len", tgt_seq_len)):
            if not isinstance(value, int) or value <= 0:
                raise ZooError(f"{key}={value} must be a positive integer")
        fractions = [float(f) for f in plain(fractions)]
        if (
            len(fractions) != 3
            or any(f < 0 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-6
            or fractions[0] <= 0
        ):
            raise ZooError(
                f"data.fractions={fractions}: expected three non-negative train/val/test fractions summing to 1"
            )
        if not 0.0 <= float(train_from_val) < 1.0:
            raise ZooError(f"data.train_from_val={train_from_val}: expected a fraction in [0, 1)")
        if float(train_from_val) > 0 and split not in ("column", "case_start"):
            raise ZooError(
                f"data.train_from_val={train_from_val} needs a case split (data.split=column or case_start), "
                f"not data.split={split}"
            )
        if recency_half_life_days is not None and not float(recency_half_life_days) > 0:
            raise ZooError(
                f"data.recency_half_life_days={recency_half_life_days}: expected a positive number of days or null"
            )
        schema, columns, synthetic, fractions = plain(schema), plain(columns), plain(synthetic), fractions
        self.schema = Schema.from_dict(dict(schema))
        self.settings = {
            "source": source, "path": path, "columns": dict(columns or {}), "schema": self.schema.to_dict(),
            "split": split, "split_column": split_column, "val_every": int(val_every), "fractions": fractions, "id_vocab_size": id_vocab_size,
            "end_token": bool(end_token), "synthetic": dict(synthetic or {}), "max_events": max_events,
        }  # fmt: skip
        # Only set when used, so the caches (fingerprints) of existing settings stay valid.
        if float(train_from_val) > 0:
            self.settings["train_from_val"] = float(train_from_val)
        self.recency_half_life_days = (
            None if recency_half_life_days is None else float(recency_half_life_days)
        )
        if path:
            p = Path(path).expanduser()
            if not p.is_file():
                raise ZooError(f"data.path={p}: no such file")
            self.settings["path_stat"] = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
        self.name = name
        self.src_seq_len, self.tgt_seq_len = int(src_seq_len), int(tgt_seq_len)
        self.folder = self.cache_dir / "events" / f"{name}-{fingerprint(self.settings)}"
        self.manifest: dict[str, Any] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.datasets: dict[str, EventWindows] = {}

    # -- prepare -----------------------------------------------------------------------------------

    def load_log(self) -> tuple[pd.DataFrame, np.ndarray | None]:
        """The normalized log (and, for synthetic data, the true per-event per-field NLL)."""
        s = self.settings
        time_cols = tuple(dict.fromkeys(f.source for f in self.schema.fields if f.derive))
        needed = [c for c in self.schema.raw_columns() if c not in ("case_id",)]
        if s["split"] == "column":
            needed.append("split")
        if s["source"] == "synthetic":
            from zoo.events.synthetic import generate_hr

            raw, nll = generate_hr(self.schema, **s["synthetic"])
            # normalize() reorders cases by start time; the NLL rows must follow their events.
            raw["_nll_row"] = np.arange(len(raw))
            df = normalize(raw, {}, [*needed, "_nll_row"], "data (synthetic)", time_cols)
            order = df.pop("_nll_row").to_numpy()
            return df, nll[order]
        raw = read_table(s["path"])
        columns = dict(s["columns"])
        self._check_target_values(raw, columns)
        if s["split"] == "column":
            columns.setdefault("split", s["split_column"])
        df = normalize(raw, columns, needed, f"data.path={s['path']}", time_cols)
        if s["max_events"]:
            keep = df["case_id"].isin(
                pd.unique(df["case_id"])[: self._cases_within(df, int(s["max_events"]))]
            )
            df = df[keep].reset_index(drop=True)
        return df, None

    def _check_target_values(self, raw: pd.DataFrame, columns: dict[str, str]) -> None:
        """A missing value of the target field would silently become the token <na> and be trained on as
        if it were an activity; other fields may miss values (BPI 2012 lacks thousands of resources)."""
        target = next(f for f in self.schema.fields if f.name == self.schema.target)
        if target.column is None:
            return
        col = columns.get(target.column) or target.column
        if col not in raw.columns:
            return  # normalize() names the missing column
        missing = np.flatnonzero(raw[col].isna().to_numpy())
        if len(missing):
            raise ZooError(
                f"data.path={self.settings['path']}: {len(missing)} events have no value in column '{col}' "
                f"(data.columns.{target.column}, the target field {target.name}; first at row {missing[0]}): "
                "expected a value for every event"
            )

    @staticmethod
    def _cases_within(df: pd.DataFrame, max_events: int) -> int:
        sizes = df.groupby("case_id", sort=False).size().to_numpy()
        return max(1, int(np.searchsorted(np.cumsum(sizes), max_events, side="right")))

    def _split_points(
        self, df: pd.DataFrame, cs: np.ndarray, ce: np.ndarray
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
        """Per split, (t, end, eoc) arrays of its samples (see the module docstring); and per event, the
        split (0 train, 1 val, 2 test) it belongs to."""
        s = self.settings
        n = len(df)
        idx = np.arange(n)
        if s["split"] == "time":
            # Every case is cut at the same moments; a later split's source windows reach back into history.
            ts = df["timestamp"].astype("int64").to_numpy()
            part = np.searchsorted(np.quantile(ts, np.cumsum(s["fractions"])[:2]), ts, side="right")
            if s["fractions"][2] == 0:  # the quantile at 1.0 is the last event itself: keep it in val
                part = np.minimum(part, 1)
        elif s["split"] == "weeks":
            # Every `val_every`-th week of the timeline is validation: the same employees and the same
            # calendar on both sides, so no calendar value of validation is new (a time split's last months
            # only ever occur with the previous year in training, which invites a month -> year shortcut).
            # Timedelta arithmetic, not int64 nanoseconds: pandas 3 parses timestamps at microsecond resolution.
            week = ((df["timestamp"] - df["timestamp"].min()) // pd.Timedelta(weeks=1)).to_numpy()
            part = (week % s["val_every"] == s["val_every"] - 1).astype(np.int64)
        else:
            first = cs == idx
            if s["split"] == "column":
                labels = df["split"].astype(str).str.lower().to_numpy()[first]
                unknown = sorted(set(labels) - set(SPLITS))
                if unknown:
                    raise ZooError(
                        f"data.split_column={s['split_column']}: values {unknown[:5]} are not train/val/test"
                    )
                case_part = np.array([SPLITS.index(x) for x in labels], dtype=np.int64)
            else:
                cut = np.floor(np.cumsum(s["fractions"]) * int(first.sum())).astype(int)
                case_part = np.searchsorted(cut, np.arange(int(first.sum())), side="right").clip(0, 2)
            moved = s.get("train_from_val", 0.0)
            if moved:
                # Cases are in start order (normalize() sorts them): the first ones of val are the oldest.
                val_cases = np.flatnonzero(case_part == 1)
                case_part[val_cases[: int(round(moved * len(val_cases)))]] = 0
            part = case_part[np.cumsum(first) - 1]
        out = {}
        for k, split in enumerate(SPLITS):
            t = idx[(part == k) & (idx > cs)]
            # A split's targets stop where another split's events start: no event is a target in two splits.
            end = np.minimum(ce[t], first_flagged(part != k, t))
            eoc = end == ce[t]
            if s[
                "end_token"
            ]:  # the end-of-case prediction after the last event of cases ending in this split
                last = np.flatnonzero((part == k) & (idx == ce - 1))
                t, end, eoc = np.r_[t, last + 1], np.r_[end, last + 1], np.r_[eoc, np.ones(len(last), bool)]
            order = np.argsort(t, kind="stable")
            out[split] = (t[order], end[order], (eoc & bool(s["end_token"]))[order])
        return out, part

    def build_cache(self, out: Path) -> None:
        df, nll = self.load_log()
        if df.empty:
            raise ZooError(f"data ({self.name}): the event log is empty")
        tokens = field_tokens(df, self.schema)
        cs, ce = _case_bounds(df["case_id"])
        splits, part = self._split_points(df, cs, ce)
        if len(splits["train"][0]) == 0:
            raise ZooError(
                f"data ({self.name}): no training samples (every training case has a single event?)"
            )
        # Vocabularies come from the training events only; later splits count their unknown values.
        vocab = Vocab.build(tokens[part == 0], self.schema, self.settings["id_vocab_size"])
        ids, _ = vocab.encode(tokens, self.schema.names)
        unknown = {}
        for k, split in enumerate(SPLITS[1:], start=1):
            if (part == k).any():
                _, counts = vocab.encode(tokens[part == k], self.schema.names)
                unknown[split] = {f: c for f, c in counts.items() if c}
        dt = (
            df["timestamp"].groupby(df["case_id"], sort=False).diff().dt.total_seconds() / 86400.0
        ).to_numpy(np.float64)
        first = cs == np.arange(len(df))
        case_len = ce[first] - cs[first]
        # Seconds since the epoch of every event: recency weights and the walk-forward backtest read them.
        event_s = (df["timestamp"] - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
        arrays = {
            "ids": ids.astype(np.int32),
            "dt": dt,
            "case_start": cs,
            "case_end": ce,
            "event_s": event_s.to_numpy(np.int64),
        }
        for split, (t, end, eoc) in splits.items():
            arrays[f"{split}_t"], arrays[f"{split}_end"], arrays[f"{split}_eoc"] = t, end, eoc
        manifest: dict[str, Any] = {
            "name": self.name,
            "settings": self.settings,
            "fingerprint": fingerprint(self.settings),
            "events": int(len(df)),
            "cases": int(len(case_len)),
            # Kept: a one-event case is one sample (predict <eoc> after it); counted so nothing is silent.
            "cases_with_one_event": int((case_len == 1).sum()),
            "samples": {k: int(len(v[0])) for k, v in splits.items()},
            "vocab_sizes": vocab.sizes(),
            "unknown_values": unknown,
            "span": [str(df["timestamp"].min()), str(df["timestamp"].max())],
        }
        if nll is not None:
            manifest["entropy_floor_nats"] = self._floor(nll, splits["val"])
        np.savez(out / "arrays.npz", **arrays)
        (out / "vocab.json").write_text(vocab.to_json())
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))

    def _floor(self, nll: np.ndarray, split: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
        """The true NLL averaged over exactly the targets the validation loss averages over."""
        t, end, _ = split
        k = np.arange(self.tgt_seq_len)
        idx = t[:, None] + k[None, :]
        valid = idx < end[:, None]
        per_field = nll[idx[valid]].mean(axis=0)
        return {
            "mean": float(per_field.mean()),
            "per_field": dict(zip(self.schema.names, map(float, per_field))),
        }

    # -- setup -------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        if not self.manifest:
            self.prepare_data()
            self.manifest = json.loads((self.folder / "manifest.json").read_text())
        return self.manifest

    def vocab(self) -> Vocab:
        return Vocab.from_json((self.folder / "vocab.json").read_text())

    def setup(self, stage: str | None = None) -> None:
        self._load()
        if not self.arrays:
            with np.load(self.folder / "arrays.npz") as z:
                self.arrays = {k: z[k] for k in z.files}
        a = self.arrays
        ids = a["ids"].astype(np.int64)
        for split in SPLITS:
            self.datasets[split] = EventWindows(
                ids,
                a["dt"],
                a["case_start"],
                a[f"{split}_t"],
                a[f"{split}_end"],
                a[f"{split}_eoc"],
                self.src_seq_len,
                self.tgt_seq_len,
            )

    def model_kwargs(self) -> dict[str, Any]:
        self._load()
        return {
            "schema": self.schema.to_dict(),
            "vocab": self.vocab().tokens,
            "src_seq_len": self.src_seq_len,
            "tgt_seq_len": self.tgt_seq_len,
        }

    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    def _split(self, split: str) -> EventWindows:
        if not self.datasets:
            self.setup()
        ds = self.datasets[split]
        if split == "test" and len(ds) == 0:
            ds = self.datasets["val"]
        return ds

    def train_weights(self) -> torch.Tensor | None:
        """Per training sample, 0.5 ** (age in days / recency_half_life_days) (None: uniform)."""
        if self.recency_half_life_days is None:
            return None
        if not self.datasets:
            self.setup()
        # t - 1 is an event of the sample's case (t may be one past the case's end for <eoc> samples).
        t0 = self.event_seconds()[self.arrays["case_start"][self.arrays["train_t"] - 1]].astype(np.float64)
        age_days = (t0.max() - t0) / 86400.0
        return torch.from_numpy(0.5 ** (age_days / self.recency_half_life_days))

    def event_seconds(self) -> np.ndarray:
        """Per event, its time in seconds since the epoch."""
        if not self.arrays:
            self.setup()
        if "event_s" not in self.arrays:
            raise ZooError(
                f"data cache {self.folder} has no event times (an older zoo built it): delete it to rebuild"
            )
        return self.arrays["event_s"]

    def train_dataloader(self):
        return self.make_loader(
            self._split("train"), train=True, collate_fn=collate_batch, weights=self.train_weights()
        )

    def val_dataloader(self):
        return self.make_loader(self._split("val"), train=False, collate_fn=collate_batch)

    def test_dataloader(self):
        return self.make_loader(self._split("test"), train=False, collate_fn=collate_batch)
