"""The TFT DataModule: metrics tables -> pytorch-forecasting `TimeSeriesDataSet`s -> batches.

`prepare_data` loads, validates, resamples and featurizes once, writing ``frame.parquet`` and
``manifest.json`` (last) to ``cache_dir/tft/<name>-<fingerprint>/``. `setup` splits every series at a
**time** cutoff (train rows end before the validation targets start; the validation encoder may look
back into the training period, as at prediction time) and builds the datasets, whose fitted
normalizers/encoders are the model's dataset parameters. With ``data.loader=fast`` (the default) the
datasets and batches come from `zoo.tft.fastpath` (identical to the stock ones; ``data.loader=stock``
switches back); the cached frame is written and read by `zoo.tft.frames`.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from zoo.core.datamodule import ZooDataModule, fingerprint
from zoo.core.errors import ZooError
from zoo.tft import params as P
from zoo.tft import sources as S
from zoo.tft.fastpath import (
    RowView,
    StockBatches,
    WindowBatches,
    batch_identity,
    direct_dataset,
    stock_collate,
    supports_direct_build,
    window_series,
)
from zoo.tft.frames import read_frame, write_frame
from zoo.tft.settings import DataConfig

log = logging.getLogger(__name__)


def dropped_message(where: str, lost: dict[str, tuple[int, int]], min_length: int, warmup: int) -> str:
    """One line naming what data.drop_short_series=true dropped: each series, its rows, the windows lost."""
    shown = ", ".join(f"'{k}' ({rows} rows, {wins} windows)" for k, (rows, wins) in list(lost.items())[:10])
    more = f" and {len(lost) - 10} more" if len(lost) > 10 else ""
    why = f" after the {warmup}-step lag/rolling warm-up" if warmup else ""
    return (
        f"{where}: data.drop_short_series=true dropped {len(lost)} series without {min_length} gap-free steps "
        f"(encoder_length+prediction_length){why}: {shown}{more}; "
        f"{sum(r for r, _ in lost.values())} rows and {sum(w for _, w in lost.values())} training/evaluation windows lost"
    )


class MetricsDataModule(ZooDataModule):
    """Server metrics (or any multi-series table) for the TFT family: the settings of
    `zoo.tft.settings.DataConfig` (typed, one docstring each) plus the shared loader settings of
    `ZooDataModule` and ``name`` (of the cache folder)."""

    family = "tft"

    def __init__(self, name: str = "metrics", **kwargs: Any):
        own = {f.name for f in fields(DataConfig)}
        super().__init__(**{k: v for k, v in kwargs.items() if k not in own})
        c = self.config = DataConfig(**{k: v for k, v in kwargs.items() if k in own})
        self.settings: dict[str, Any] = c.fingerprinted()
        if (
            c.source == "prometheus"
        ):  # the resolved range and queries name the cache (a new range: a new pull)
            from zoo.tft import prometheus as prom

            self.prometheus = prom.make_source(
                c.url, c.queries, c.targets, c.start, c.end, c.step, c.series_labels, c.pull
            )
            self.settings["prometheus"] = self.prometheus.key()
            self.resumable_cache = True  # a killed pull keeps its finished chunks in the .tmp folder
        if c.path and c.source != "synthetic":  # a changed file must not reuse a stale cache
            p = Path(c.path).expanduser()
            if not p.exists() and not any(ch in str(p) for ch in "*?["):
                raise ZooError(f"data.path={p}: no such file")
            if p.exists():
                st = p.stat()
                self.settings["path_stat"] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
        self.static_categoricals = list(c.static_categoricals)
        self.encoder_length, self.prediction_length = int(c.encoder_length), int(c.prediction_length)
        self.val_fraction, self.test_fraction = float(c.val_fraction), float(c.test_fraction)
        self.split_rows = c.split_rows
        self.standardize = bool(c.standardize)
        self.target_normalizer = c.target_normalizer
        self.target_transformation = c.target_transformation
        self.channel_independent = bool(c.channel_independent)
        self.season = c.season
        self.eval_stride = max(1, int(c.eval_stride))
        self.loader = c.loader
        self.name = name
        self.targets = c.targets
        self.folder = self.cache_dir / "tft" / f"{name}-{fingerprint(self.settings)}"
        self.manifest: dict[str, Any] = {}
        self.frame: pd.DataFrame | None = None
        self.datasets: dict[str, Any] = {}
        self.fast: dict[str, WindowBatches] = {}
        self.cutoffs: dict[str, dict[str, int]] = {}
        self.scaler: dict[str, list[float]] = {}
        self.direct = False

    # -- prepare ---------------------------------------------------------------------------------------

    def build_cache(self, out: Path) -> None:
        import pyarrow as pa

        frame, manifest = self.build_frame()
        write_frame(frame, out / "frame.parquet")
        del frame
        pa.default_memory_pool().release_unused()
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))

    def raw_frame(self) -> pd.DataFrame:
        s = self.settings
        where = f"data ({self.name})"
        if s["source"] == "synthetic":
            return S.synthetic_hosts(**s["synthetic"])
        if s["source"] == "alibaba":
            return S.load_alibaba(s["path"])
        if s["source"] == "bitbrains":
            return S.load_bitbrains(s["path"])
        if s["source"] == "nab":
            return S.load_nab(s["path"])
        if s["source"] == "ett":
            return S.load_ett(s["path"])
        if s["source"] == "prometheus":
            from zoo.tft import prometheus as prom

            tmp = self.folder.with_name(self.folder.name + ".tmp")  # prepare_data's build folder
            frame = prom.load(self.prometheus, tmp / "pull")
            return frame.drop(columns=[c for c in frame.columns if c.startswith(prom.LABEL_PREFIX)])
        df = S.read_table(s["path"], s["format"], s["read_kwargs"])
        df = S.map_columns(df, s["columns"], f"{where} {s['path']}")
        if "series" not in df.columns and "timestamp" in df.columns:
            df["series"] = "series0"  # a single-series table needs no id column
        if "timestamp" in df.columns:
            df["timestamp"] = S.to_timestamps(
                df["timestamp"],
                s["timestamp_unit"],
                f"{where} {s['path']}",
                s["columns"].get("timestamp") or "timestamp",
            )
        return df

    def build_frame(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        s = self.settings
        where = f"data ({self.name}{', ' + str(s['path']) if s['path'] else ''})"
        df = self.raw_frame()
        covariates = [*s["known_reals"], *s["unknown_reals"], *s["static_reals"]]
        if s["duplicates"] == "mean" and {"series", "timestamp"} <= set(df.columns):
            df = df.groupby(["series", "timestamp"], as_index=False).mean(numeric_only=True)
        df = S.validate(df, s["targets"], covariates, where)
        extra = [c for c in df.columns if c.endswith("_clean")]  # synthetic noise-free signal, for tests
        if s["max_series"]:
            keep = sorted(df["series"].unique())[: int(s["max_series"])]
            df = df[df["series"].isin(keep)]
        max_gap_steps = int(pd.Timedelta(s["max_gap"]) // pd.Timedelta(s["step"])) if s["max_gap"] else 0
        raw_rows = df.groupby("series", sort=True).size()
        frame = S.regularize(df, s["step"], [*s["targets"], *covariates, *extra], max_gap_steps, where)
        del df  # the raw table is a second copy of the fleet while the features are added
        frame = S.check_lengths(
            frame, s["min_length"], where, drop_short=True
        )  # short gap segments are dropped
        frame, origin = S.add_time_index(frame, s["step"])
        dropped = sorted(set(raw_rows.index) - set(frame["host"]))
        if dropped and not s["drop_short_series"]:
            raise ZooError(
                f"{where}: series '{dropped[0]}' has no stretch of {s['min_length']} steps "
                f"(encoder_length+prediction_length) without gaps ({int(raw_rows[dropped[0]])} raw rows): lower the lengths, raise data.max_gap, or set data.drop_short_series=true"
            )
        # series -> (raw rows, windows it would have given): what data.drop_short_series=true removed.
        lost = {name: (int(raw_rows[name]), 0) for name in dropped}
        calendar = S.add_calendar(frame, s["calendar"])
        lag_cols, warmup = S.add_lags(frame, s["targets"], s["lags"], s["rolling"])
        if warmup:
            before = frame.groupby("series", sort=True).size()
            frame = frame[frame.groupby("series").cumcount() >= warmup]
            frame = S.check_lengths(frame, s["min_length"], where, drop_short=bool(s["drop_short_series"]))
            for name in sorted(set(before.index) - set(frame["series"])):
                lost[name] = (int(before[name]), max(0, int(before[name]) - s["min_length"] + 1))
        ordered = (
            frame["series"].is_monotonic_increasing
            and (frame.groupby("series", sort=False)["time_idx"].diff().dropna() > 0).all()
        )
        if not ordered:
            frame = frame.sort_values(["series", "time_idx"])
        frame.index = pd.RangeIndex(len(frame))  # not reset_index: that copies every column
        manifest = {
            "rows": len(frame), "series": sorted(frame["series"].unique().tolist()), "origin": str(origin),
            "calendar": calendar, "lag_features": lag_cols, "extra": extra, "step": s["step"],
            "dropped_series": {k: {"rows": v[0], "windows_lost": v[1]} for k, v in lost.items()},
            "warmup": warmup,
        }  # fmt: skip
        return frame, manifest

    # -- setup -----------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self.frame is not None:
            return
        if not (self.folder / "manifest.json").is_file():
            self.prepare_data()
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        dropped = self.manifest.get("dropped_series")
        if dropped:  # said on every load, not only when the cache was built
            where = f"data ({self.name}{', ' + str(self.settings['path']) if self.settings['path'] else ''})"
            lost = {k: (int(v["rows"]), int(v["windows_lost"])) for k, v in dropped.items()}
            log.warning(
                "[zoo] %s",
                dropped_message(
                    where, lost, self.settings["min_length"], int(self.manifest.get("warmup", 0))
                ),
            )
        # The synthetic source's noise-free `*_clean` columns stay in the cache file only (a fleet's
        # 4 x 8 bytes per row): nothing trains or evaluates on them.
        self.frame = read_frame(self.folder / "frame.parquet", skip=self.manifest.get("extra") or ())
        self.frame["host"] = self.frame["host"].astype(str)
        self.frame["series"] = self.frame["series"].astype(str)

    @property
    def known_reals(self) -> list[str]:
        return [*self.settings["known_reals"], *self.manifest.get("calendar", [])]

    @property
    def model_targets(self) -> list[str]:
        """The TFT's target columns: the data's targets, or ``value`` when channel-independent."""
        return [S.CHANNEL_VALUE] if self.channel_independent else self.targets

    @property
    def unknown_reals(self) -> list[str]:
        return [*self.model_targets, *self.settings["unknown_reals"], *self.manifest.get("lag_features", [])]

    @property
    def season_steps(self) -> int:
        return S.steps_per(self.season, self.settings["step"])

    def split_points(self) -> dict[str, dict[str, int]]:
        """Per series: the last time_idx of train, of val, and of test (inclusive)."""
        assert self.frame is not None
        codes, names = pd.factorize(self.frame["series"], sort=True)
        order = np.argsort(codes, kind="stable")  # each series' rows in frame order, as groupby gives them
        t = self.frame["time_idx"].to_numpy()[order]
        n = np.bincount(codes, minlength=len(names))
        first = np.cumsum(n) - n
        if self.split_rows:
            n_train, n_val, n_test = self.split_rows
            n_train, n_val = np.minimum(n_train, n), np.minimum(n_train + n_val, n)
            n_test = np.minimum(n_val + n_test, n)
        else:
            n_test = n
            n_val = n - np.round(n * self.test_fraction).astype(np.int64)
            n_train = n_val - np.round(n * self.val_fraction).astype(np.int64)
        train = np.where(n_train > 0, t[first + np.maximum(n_train, 1) - 1], t[first] - 1)
        names = [str(x) for x in names]
        return {
            "train": dict(zip(names, train.tolist())),
            "val": dict(zip(names, t[first + n_val - 1].tolist())),
            "test": dict(zip(names, t[first + n_test - 1].tolist())),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from pytorch_forecasting import TimeSeriesDataSet

        self._load()
        assert self.frame is not None
        where = f"data ({self.name})"
        frame, in_train, static_categoricals = self._training_frame(where)
        min_len = self.encoder_length + self.prediction_length
        sizes = frame["series"][in_train].value_counts()
        in_train &= frame["series"].isin(sizes.index[sizes >= min_len]).to_numpy()
        if not in_train.any():
            raise ZooError(
                f"{where}: no series has encoder_length+prediction_length={min_len} steps before its validation cutoff"
            )
        train_rows, train_columns = RowView(frame, in_train), self.dataset_columns(frame)
        del in_train
        kwargs = self._dataset_kwargs(static_categoricals)
        # The fast loader's datasets skip pytorch-forecasting's frame-wide preprocessing (several copies
        # of the training rows, most of a fleet's peak memory and setup time): same tensors, index and
        # fitted parameters (tests/tft/test_fastpath.py). data.loader=stock keeps the stock build.
        self.direct = self.loader == "fast" and supports_direct_build(kwargs["target_normalizer"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.direct:
                self.datasets["train"] = direct_dataset(train_rows, kwargs, columns=train_columns)
            else:
                self.datasets["train"] = TimeSeriesDataSet(
                    train_rows.take(np.ones(len(train_rows)), train_columns), **kwargs
                )
            del train_rows
            for split in ("val", "test"):
                ds = self.eval_dataset(split)
                if ds is not None:
                    self.datasets[split] = ds
        if "val" not in self.datasets:
            raise ZooError(
                f"{where}: the validation split has no window of prediction_length={self.prediction_length}: raise data.val_fraction or lower the lengths"
            )
        if self.loader == "fast":
            self.fast = {k: WindowBatches(v) for k, v in self.datasets.items()}

    def _training_frame(self, where: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
        """The frame the datasets are built from (standardized, melted into channels when so set), the
        mask of its training rows and the static categoricals (`channel` added for channel models)."""
        self.cutoffs = self.split_points()
        frame = self.frame
        assert frame is not None
        # The training rows as a mask, their columns copied out one at a time (RowView): pytorch-forecasting
        # copies what it is given several times over, which on a fleet was most of the peak memory.
        in_train = (frame["time_idx"] <= frame["series"].map(self.cutoffs["train"])).to_numpy()
        if self.standardize:
            own = self.settings
            cols = [*self.targets, *own["known_reals"], *own["unknown_reals"], *own["static_reals"]]
            stats = frame.loc[in_train, cols].agg(["mean", "std"])
            self.scaler = {c: [float(stats.loc["mean", c]), float(stats.loc["std", c]) or 1.0] for c in cols}
            frame = frame.copy()
            for c, (mu, sd) in self.scaler.items():
                frame[c] = (frame[c] - mu) / sd
            self.frame = frame
        static_categoricals = list(self.static_categoricals)
        if self.channel_independent:
            clash = [c for c in (S.CHANNEL_VALUE, S.CHANNEL) if c in frame.columns]
            if clash:
                raise ZooError(
                    f"{where}: data.channel_independent=true needs the column names {clash} for itself; rename that column"
                )
            frame = S.melt_channels(frame, self.targets)
            self.frame = frame
            self.cutoffs = self.split_points()
            in_train = (frame["time_idx"] <= frame["series"].map(self.cutoffs["train"])).to_numpy()
            static_categoricals = [*static_categoricals, S.CHANNEL]
        return frame, in_train, static_categoricals

    def _dataset_kwargs(self, static_categoricals: list[str]) -> dict[str, Any]:
        """`TimeSeriesDataSet` arguments of the training dataset (its fitted parameters are the model's)."""
        from pytorch_forecasting.data import (
            EncoderNormalizer,
            GroupNormalizer,
            MultiNormalizer,
            NaNLabelEncoder,
        )

        if self.target_normalizer == "encoder":
            normalizers = [
                EncoderNormalizer(transformation=self.target_transformation) for _ in self.model_targets
            ]
        else:
            normalizers = [
                GroupNormalizer(groups=["series"], transformation=self.target_transformation)
                for _ in self.model_targets
            ]
        targets = self.model_targets
        multi = len(targets) > 1
        # add_nan: a host never seen in training (the user's own machine) still gets a forecast, with the
        # average training scale for its group normalizer.
        encoders = {
            c: NaNLabelEncoder(add_nan=True) for c in [*static_categoricals, "series", "__group_id__series"]
        }
        return dict(
            time_idx="time_idx",
            target=targets if multi else targets[0],
            group_ids=["series"],
            max_encoder_length=self.encoder_length,
            min_encoder_length=self.encoder_length,
            max_prediction_length=self.prediction_length,
            min_prediction_length=self.prediction_length,
            static_categoricals=static_categoricals,
            static_reals=list(self.settings["static_reals"]),
            time_varying_known_reals=list(self.known_reals),
            time_varying_unknown_reals=list(self.unknown_reals),
            target_normalizer=MultiNormalizer(normalizers) if multi else normalizers[0],
            categorical_encoders=encoders,
            add_relative_time_idx=True,
            add_target_scales=True,
            add_encoder_length=False,
            allow_missing_timesteps=False,
        )

    def eval_dataset(self, split: str) -> Any:
        """Windows whose first target lies after the previous split's cutoff (per series) and whose last
        lies within this split; their encoders may reach back into earlier splits."""
        from pytorch_forecasting import TimeSeriesDataSet

        assert self.frame is not None
        prev = self.cutoffs["train" if split == "val" else "val"]
        end = self.cutoffs[split]
        trained = set(window_series(self.datasets["train"]))
        frame = self.frame
        series = frame["series"]
        # Rows before the previous cutoff matter only as encoder history, or as the seasonal-naive
        # baseline's source (zoo.tft.evaluate checks that it lies in the same series): building the
        # dataset over every series' whole past cost a full copy of the fleet per split.
        lookback = max(self.encoder_length, S.seasonal_lag(self.prediction_length, self.season_steps))
        t = frame["time_idx"].to_numpy()
        # Per-row cutoffs through each series' code (one dict lookup per series, not per row).
        codes, names = pd.factorize(series)
        after = pd.Series(names).map(prev).to_numpy(np.float64)[codes]
        keep_rows = pd.Series(names).isin(trained).to_numpy()[codes]
        keep_rows &= t <= pd.Series(names).map(end).to_numpy(np.float64)[codes]
        keep_rows &= t > after - lookback
        if not (t > after)[keep_rows].any():
            return None
        del after, codes
        stride = self.eval_stride

        min_prediction_idx = int(min(prev.values())) + 1
        columns = self.dataset_columns(frame)
        if getattr(self, "direct", False):
            ds = direct_dataset(
                RowView(frame, keep_rows), {}, self.datasets["train"], min_prediction_idx, columns
            )
        else:
            frame = frame.loc[keep_rows, columns]
            ds = TimeSeriesDataSet.from_dataset(
                self.datasets["train"], frame, stop_randomization=True, min_prediction_idx=min_prediction_idx
            )
        del frame
        if not len(ds):
            return None
        # What `ds.filter` over `decoded_index` keeps, without decoding the series name of every window
        # (minutes on a fleet): fixed lengths, so a window's first prediction is its last step - P + 1.
        first = ds.data["time"][ds.index["index_end"].to_numpy()].numpy() - self.prediction_length + 1
        origin = pd.Series(window_series(ds)).map(prev).to_numpy()
        mask = (first > origin) & ((first - origin - 1) % stride == 0)
        if not mask.any():
            return None
        out = copy.copy(ds)  # as ds.filter(copy=True) does: a shallow copy with its own index
        out.index = ds.index[mask]
        return out

    def dataset_columns(self, frame: pd.DataFrame) -> list[str]:
        """The frame's columns a `TimeSeriesDataSet` of these settings reads."""
        wanted = ["time_idx", "series", *self.static_categoricals, *self.settings["static_reals"],
                  *self.known_reals, *self.unknown_reals, *self.targets]  # fmt: skip
        if self.channel_independent:
            wanted.append(S.CHANNEL)
        return [c for c in dict.fromkeys(wanted) if c in frame.columns]

    # -- what the model reads --------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        self.setup()
        return {
            "dataset_parameters": P.encode(self.datasets["train"].get_parameters()),
            "preprocess": self.preprocess_spec(),
        }

    def preprocess_spec(self) -> dict[str, Any]:
        """What prediction on new data repeats before the dataset parameters apply (stored with the model)."""
        s = self.settings
        return {
            "step": s["step"], "max_gap": s["max_gap"], "calendar": self.manifest.get("calendar", []),
            "lags": s["lags"], "rolling": s["rolling"], "targets": self.targets, "scaler": self.scaler,
            "origin": self.manifest.get("origin"), "season_steps": self.season_steps,
            "channels": self.targets if self.channel_independent else None,
            "encoder_length": self.encoder_length, "prediction_length": self.prediction_length,
        }  # fmt: skip

    def fingerprint(self) -> str:
        return self.folder.name

    # -- loaders ---------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        if split not in self.datasets:
            split = "val"
        if self.loader == "fast":
            return self.make_loader(self.fast[split], train=train, collate_fn=batch_identity)
        return self.make_loader(self.datasets[split], train=train, collate_fn=stock_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def batches(self, split: str) -> WindowBatches | StockBatches:
        """Indexable batches of a split's windows: precomputed where the settings allow, stock otherwise."""
        self.setup()
        if split not in self.datasets:
            split = "val"
        if split not in self.fast:
            try:
                self.fast[split] = WindowBatches(self.datasets[split])
            except ZooError:
                return StockBatches(self.datasets[split])
        return self.fast[split]

    def series_arrays(self, split: str) -> dict[str, Any]:
        """Raw target arrays of the dataset behind `split`, for baselines (row-aligned with its windows)."""
        ds = self.datasets[split if split in self.datasets else "val"]
        first_row = ds.data["groups"][:, 0]
        # Row where each row's series starts: windows' seasonal lookback must not cross into another series.
        change = torch.ones(len(first_row), dtype=torch.bool)
        change[1:] = first_row[1:] != first_row[:-1]
        starts = torch.cummax(
            torch.where(change, torch.arange(len(first_row)), torch.zeros_like(first_row)), dim=0
        ).values
        return {"targets": [t.clone() for t in ds.data["target"]], "series_start": starts}
