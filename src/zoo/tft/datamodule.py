"""The TFT DataModule: metrics tables -> pytorch-forecasting `TimeSeriesDataSet`s -> batches.

`prepare_data` loads, validates, resamples and featurizes once, writing ``frame.parquet`` and
``manifest.json`` (last) to ``cache_dir/tft/<name>-<fingerprint>/``. `setup` splits every series at a
**time** cutoff (train rows end before the validation targets start; the validation encoder may look
back into the training period, as at prediction time) and builds the datasets, whose fitted
normalizers/encoders are the model's dataset parameters: with the fast loader and group normalizers,
`direct_dataset` gives the stock `TimeSeriesDataSet` (same tensors, index and parameters) without
pytorch-forecasting's frame-wide preprocessing, which held several copies of a fleet's rows.

Batches come from `WindowBatches` by default: the stock dataset's tensors and sample index are turned
into gather indices once, and a batch is a handful of tensor indexing operations instead of
``batch_size`` calls of ``TimeSeriesDataSet.__getitem__`` plus ``_collate_fn`` (pytorch-forecasting
issues #715, #1426, #1849). The batches are identical to the stock ones (tests/tft/test_loader.py);
``data.loader=stock`` switches back. EncoderNormalizer targets (ETTh1) are scaled per window inside
the batch, vectorized, instead of the stock path's fit + sklearn transform per window.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.core.datamodule import ZooDataModule, fingerprint
from zoo.core.errors import ZooError
from zoo.tft import params as P
from zoo.tft import sources as S

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "file", "alibaba", "bitbrains", "nab", "ett", "prometheus")


def batch_identity(batch: Any) -> Any:
    """collate_fn for datasets whose ``__getitems__`` already returns a whole batch (module level: picklable)."""
    return batch


def stock_collate(batch: Any) -> Any:
    from pytorch_forecasting import TimeSeriesDataSet

    return TimeSeriesDataSet._collate_fn(batch)


class WindowBatches(Dataset):
    """Fixed-length windows of a `TimeSeriesDataSet`, batched by tensor indexing.

    Only the settings the zoo uses are supported (fixed encoder/prediction lengths, no length
    randomization, no weights, no missing steps inside a window; target normalizers GroupNormalizer or
    EncoderNormalizer(method="standard", no transformation or max_length)); anything else is refused
    rather than batched differently from the stock loader.

    An EncoderNormalizer target is scaled per window from the batch's own encoder rows, as the stock
    ``__getitem__`` does one window at a time (and with one sklearn call per window for the
    ``<target>_center``/``<target>_scale`` inputs); the arithmetic below follows torch's and sklearn's
    order of operations, so the values are bitwise the same (tests/tft/test_loader.py).
    """

    def __init__(self, ds: Any):
        from pytorch_forecasting.data import EncoderNormalizer

        self.E, self.P = int(ds.max_encoder_length), int(ds.max_prediction_length)
        L = self.E + self.P
        problems = []
        if ds.min_encoder_length != self.E or ds.min_prediction_length != self.P:
            problems.append("variable encoder/prediction lengths")
        if ds.randomize_length is not None:
            problems.append("randomize_length")
        if ds.data["weight"] is not None:
            problems.append("weights")
        if any(isinstance(n, EncoderNormalizer) for n in ds._scalers.values()):
            problems.append("EncoderNormalizer on covariates")
        problems += [
            why
            for n in ds.target_normalizers
            if isinstance(n, EncoderNormalizer) and (why := unsupported_encoder_normalizer(n))
        ]
        index = ds.index
        if len(index) and not (
            (index.index_end - index.index_start + 1 == L).all() and (index.sequence_length == L).all()
        ):
            problems.append("windows with missing time steps")
        if problems:
            raise ZooError(f"data.loader=fast does not support {', '.join(problems)}: use data.loader=stock")
        self.multi_target = bool(ds.multi_target)
        self.reals = ds.data["reals"]
        self.cats = ds.data["categoricals"]
        self.targets = list(ds.data["target"])
        self.time = ds.data["time"]
        self.starts = torch.as_tensor(index.index_start.to_numpy(), dtype=torch.long)
        self.enc = torch.arange(self.E)
        self.dec = torch.arange(self.E, L)
        self.dec_steps = torch.arange(self.P)
        # Columns __getitem__ overwrites per sample; with fixed lengths they are the same for every window.
        self.constant_cols: list[tuple[int, torch.Tensor]] = []
        if ds.add_relative_time_idx:
            pattern = torch.arange(-self.E, self.P, dtype=self.reals.dtype) / ds.max_encoder_length
            self.constant_cols.append((ds.reals.index("relative_time_idx"), pattern))
        if ds.add_encoder_length:
            value = (self.E - 0.5 * ds.max_encoder_length) / ds.max_encoder_length * 2.0
            self.constant_cols.append(
                (ds.reals.index("encoder_length"), torch.full((L,), value, dtype=self.reals.dtype))
            )
        # Target scales per group, asked of the stock normalizer once per distinct group.
        groups = ds.data["groups"][self.starts] if len(self.starts) else ds.data["groups"][:0]
        self.row_groups = ds.data["groups"]  # a window's groups are its first row's (gathered per batch)
        if (
            groups.shape[1] == 1
        ):  # torch.unique(dim=0) sorts rows in seconds on a fleet; one column: np.unique
            u, inv = np.unique(groups[:, 0].numpy(), return_inverse=True)
            uniq, inverse = torch.from_numpy(u[:, None].copy()), torch.from_numpy(inv.astype(np.int64))
        else:
            uniq, inverse = (
                torch.unique(groups, dim=0, return_inverse=True) if len(groups) else (groups, groups[:, 0])
            )
        n_targets = len(self.targets)
        table = np.zeros((len(uniq), n_targets, 2), dtype=np.float32)
        self.encoder_norm: list[dict[str, Any] | None] = [
            self._encoder_spec(ds, name, n) if isinstance(n, EncoderNormalizer) else None
            for name, n in zip(ds.target_names, ds.target_normalizers)
        ]
        for t, norm in enumerate(ds.target_normalizers):
            if self.encoder_norm[t] is None:
                table[:, t] = group_scales(norm, uniq, ds.group_ids)
        self.scale_table = torch.from_numpy(table)
        self.scale_row = inverse.to(torch.int32 if len(uniq) < 2**31 else torch.long)
        del groups

    @staticmethod
    def _encoder_spec(ds: Any, name: str, norm: Any) -> dict[str, Any]:
        """Where the stock `__getitem__` writes an EncoderNormalizer target's per-window values."""
        cols = []
        if ds.add_target_scales:
            for k, suffix in enumerate(("center", "scale")):
                col = f"{name}_{suffix}"
                cols.append((ds.reals.index(col), k, scaler_affine(ds.get_transformer(col), col)))
        return {
            "center": bool(norm.center),
            "pos": ds.reals.index(name) if name in ds.reals else None,
            "scale_cols": cols,
        }

    def __len__(self) -> int:
        return len(self.starts)

    def window_rows(self, indices: Any) -> torch.Tensor:
        """Row positions (into the dataset tensors) of the first step of each window."""
        return self.starts[torch.as_tensor(indices, dtype=torch.long)]

    def __getitems__(self, indices: list[int]) -> tuple[dict[str, Any], tuple[Any, None]]:
        ii = torch.as_tensor(indices, dtype=torch.long)
        start = self.starts[ii]
        rows_enc = start[:, None] + self.enc
        rows_dec = start[:, None] + self.dec
        enc_cont, dec_cont = self.reals[rows_enc], self.reals[rows_dec]
        for col, pattern in self.constant_cols:
            enc_cont[:, :, col] = pattern[: self.E]
            dec_cont[:, :, col] = pattern[self.E :]
        enc_target = [t[rows_enc] for t in self.targets]
        dec_target = [t[rows_dec] for t in self.targets]
        scales = self.scale_table[self.scale_row[ii]]
        target_scale: Any = [scales[:, t].contiguous() for t in range(len(self.targets))]
        for t, spec in enumerate(self.encoder_norm):
            if spec is None:
                continue
            center, scale = encoder_scale(enc_target[t], spec["center"])
            target_scale[t] = torch.stack([center, scale], dim=-1)
            if spec["pos"] is not None:
                enc_cont[:, :, spec["pos"]] = (enc_target[t] - center[:, None]) / scale[:, None]
                dec_cont[:, :, spec["pos"]] = (dec_target[t] - center[:, None]) / scale[:, None]
            for col, k, (shift, div) in spec["scale_cols"]:
                value = ((target_scale[t][:, k].double() - shift) / div).float()[:, None]
                enc_cont[:, :, col] = value
                dec_cont[:, :, col] = value
        if not self.multi_target:
            enc_target, dec_target, target_scale = enc_target[0], dec_target[0], target_scale[0]
        B = len(ii)
        x = {
            "encoder_cat": self.cats[rows_enc],
            "encoder_cont": enc_cont,
            "encoder_target": enc_target,
            "encoder_lengths": torch.full((B,), self.E, dtype=torch.long),
            "decoder_cat": self.cats[rows_dec],
            "decoder_cont": dec_cont,
            "decoder_target": dec_target,
            "decoder_lengths": torch.full((B,), self.P, dtype=torch.long),
            "decoder_time_idx": (self.time[start] + self.E)[:, None] + self.dec_steps,
            "groups": self.row_groups[start],
            "target_scale": target_scale,
        }
        return x, (dec_target, None)

    def __getitem__(self, i: int) -> tuple[dict[str, Any], tuple[Any, None]]:
        return self.__getitems__([i])


def unsupported_encoder_normalizer(norm: Any) -> str | None:
    """Why the fast loader cannot reproduce this EncoderNormalizer's batches, or None."""
    bad = []
    if norm.method != "standard":
        bad.append(f"method={norm.method!r}")
    if norm.transformation is not None:
        bad.append(f"transformation={norm.transformation!r}")
    if norm.max_length is not None:
        bad.append(f"max_length={norm.max_length!r}")
    return f"EncoderNormalizer({', '.join(bad)})" if bad else None


def encoder_scale(enc: torch.Tensor, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window (center, scale) of an EncoderNormalizer(method="standard") fitted on each row of `enc`
    (windows x encoder steps, float32), bitwise as ``torch.mean(row)``, ``torch.std(row) + eps``.

    torch reduces a whole 1-D tensor's std with one float64 pass over ``x - mean`` in order (the
    all-dims path of std_var), so the squares are summed sequentially in float64 here too (a cumulative
    sum's last column is that sequential sum); pairwise summation would differ in the last bit now and
    then. The row means of a contiguous (windows, steps) tensor are the 1-D means (checked in the test).
    """
    enc = enc.contiguous()
    mean = enc.mean(dim=1)
    dx = enc.double().numpy() - mean.double().numpy()[:, None]
    var = np.cumsum(dx * dx, axis=1)[:, -1] / max(enc.shape[1] - 1, 0)
    std = torch.from_numpy(np.sqrt(var).astype(np.float32))
    scale = std + torch.finfo(enc.dtype).eps
    return (mean if center else torch.zeros_like(mean)), scale


def scaler_affine(scaler: Any, column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, divisor) in float64 of the covariate scaler the stock dataset applies to `column`: the
    stock path hands sklearn a 0-d torch tensor, which it converts to float64, so ``(x - mean) / scale``
    runs in float64 and is rounded to float32 when written into the batch."""
    from sklearn.preprocessing import StandardScaler

    if scaler is None:
        return torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    if not isinstance(scaler, StandardScaler):
        raise ZooError(
            f"data.loader=fast does not support a {type(scaler).__name__} scaler for {column}: use data.loader=stock"
        )
    shift = float(np.asarray(scaler.mean_).reshape(-1)[0]) if scaler.with_mean else 0.0
    div = float(np.asarray(scaler.scale_).reshape(-1)[0]) if scaler.with_std else 1.0
    return torch.tensor(shift, dtype=torch.float64), torch.tensor(div, dtype=torch.float64)


def group_scales(norm: Any, groups: torch.Tensor, group_ids: list[str]) -> np.ndarray:
    """(len(groups), 2) target scales of a fitted normalizer, one `get_parameters` call per group."""
    out = np.zeros((len(groups), 2), dtype=np.float32)
    for row, g in enumerate(groups):
        out[row] = np.asarray(norm.get_parameters(g, group_ids), dtype=np.float32)
    return out


class StockBatches(Dataset):
    """The `WindowBatches` interface over the stock ``__getitem__`` + collate, for settings the fast path
    does not reproduce (e.g. a robust EncoderNormalizer): evaluation and prediction use either."""

    def __init__(self, ds: Any):
        self.ds = ds
        self.starts = torch.as_tensor(ds.index.index_start.to_numpy(), dtype=torch.long)
        self.time = ds.data["time"]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: list[int]) -> Any:
        return stock_collate([self.ds[int(i)] for i in indices])

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])


def window_series(ds: Any) -> np.ndarray:
    """The series id of each window of `ds`, decoding each distinct group once."""
    codes = ds.data["groups"][ds.index["index_start"].to_numpy(), 0].numpy()
    uniq, inverse = np.unique(codes, return_inverse=True)
    name = ds.group_ids[0]
    names = ds.transform_values(name=name, values=pd.Series(uniq, name=name), group_id=True, inverse=True)
    return np.asarray(names, dtype=object)[inverse]


def read_frame(path: Path, skip: Any = ()) -> pd.DataFrame:
    """The cached frame without the `skip` columns, one row group at a time into preallocated columns:
    reading the whole table first held it twice (decompression buffers, then Arrow's copy) on a fleet.
    String columns become object arrays sharing one Python string per distinct value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    schema = file.schema_arrow
    n = file.metadata.num_rows
    skip = set(skip)
    keep = [f.name for f in schema if f.name not in skip]
    text = [
        c
        for c in keep
        if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)
    ]
    plain = [c for c in keep if c not in text]

    def whole() -> pd.DataFrame:  # other types (bool, nested, nullable ints...): Arrow's own conversion
        table = pq.read_table(path, columns=keep)
        frame = table.to_pandas(self_destruct=True, split_blocks=True)
        del table
        pa.default_memory_pool().release_unused()
        return frame

    if any(not (pa.types.is_floating(schema.field(c).type) or pa.types.is_integer(schema.field(c).type)
                or pa.types.is_timestamp(schema.field(c).type)) for c in plain) or file.metadata.num_row_groups == 0:  # fmt: skip
        return whole()
    empty = schema.empty_table().to_pandas()
    if not all(isinstance(empty[c].dtype, np.dtype) for c in plain):
        return whole()
    cols: dict[str, np.ndarray] = {c: np.empty(n, dtype=empty[c].dtype) for c in plain}
    cols.update({c: np.empty(n, dtype=object) for c in text})
    interned: dict[str, str] = {}
    start = 0
    for g in range(file.num_row_groups):
        part = file.read_row_group(g, columns=keep)
        stop = start + part.num_rows
        for c in plain:
            column = part.column(c)
            if column.null_count and not pa.types.is_floating(column.type):
                del cols, part
                return whole()
            cols[c][start:stop] = column.to_pandas().to_numpy()
        for c in text:
            enc = part.column(c).combine_chunks().dictionary_encode()
            names = [interned.setdefault(v, v) for v in enc.dictionary.to_pylist()]
            lut = np.array([*names, None], dtype=object)
            cols[c][start:stop] = lut[enc.indices.fill_null(len(names)).to_numpy()]
        del part
        start = stop
    pa.default_memory_pool().release_unused()
    return pd.DataFrame({c: cols[c] for c in keep}, copy=False)


def write_frame(frame: pd.DataFrame, path: Path, rows: int = 500_000) -> None:
    """``frame.to_parquet(path, index=False)`` a slice of rows at a time: converting the whole frame to
    Arrow first held a second copy of the fleet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(frame.iloc[:rows], preserve_index=False)
    # Dictionary pages pay off for the id columns only (trying them on every float column was most of
    # the write time).
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    with pq.ParquetWriter(path, schema, use_dictionary=text or False) as writer:
        for start in range(0, max(len(frame), 1), rows):
            part = pa.Table.from_pandas(frame.iloc[start : start + rows], schema=schema, preserve_index=False)
            writer.write_table(part)
            del part
    pa.default_memory_pool().release_unused()


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


def supports_direct_build(normalizer: Any) -> bool:
    """Whether `direct_dataset` reproduces the stock preprocessing for this target normalizer: a
    GroupNormalizer (or a MultiNormalizer of them) without a transformation."""
    from pytorch_forecasting.data import GroupNormalizer, MultiNormalizer

    norms = normalizer.normalizers if isinstance(normalizer, MultiNormalizer) else [normalizer]
    return all(
        type(n) is GroupNormalizer and n.transformation is None and n.method == "standard" for n in norms
    )


def encode_codes(encoder: Any, values: pd.Series) -> np.ndarray:
    """``NaNLabelEncoder(add_nan=True).transform(values)`` (int64 codes, unknown -> 0), one dict lookup per
    distinct value instead of one per row."""
    inverse, uniq = pd.factorize(values, use_na_sentinel=False)
    lut = np.array([encoder.classes_.get(v, 0) for v in uniq], dtype=np.int64)
    return lut[inverse]


def group_norm(norm: Any, X: pd.DataFrame) -> np.ndarray:
    """``GroupNormalizer.get_norm(X)``, each row's fitted (center, scale), by a positional lookup instead
    of pandas' join (seconds and several row-sized copies on a fleet): unknown groups and missing values
    take ``missing_``, as the stock ``fillna(missing_)`` gives them."""
    if norm.scale_by_group or len(norm._groups) != 1:
        return norm.get_norm(X)
    table = norm.norm_
    pos = table.index.get_indexer(X[norm._groups[0]].to_numpy())
    out = table.to_numpy(np.float64)[pos]
    out[pos < 0] = np.nan
    for j, name in enumerate(table.columns):
        col = out[:, j]
        col[np.isnan(col)] = norm.missing_[name]
    return out


class RowView:
    """Some rows of a frame, each column copied out only when asked for (instead of a copy of the whole
    selection): ``view[name]`` is a Series and ``view[[names]]`` a DataFrame on a fresh RangeIndex."""

    def __init__(self, frame: pd.DataFrame, rows: np.ndarray | None = None):
        self.frame = frame
        self.rows = (
            np.arange(len(frame)) if rows is None else np.flatnonzero(rows) if rows.dtype == bool else rows
        )
        self.index = pd.RangeIndex(len(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, list):
            return pd.DataFrame({k: self[k] for k in key}, index=self.index)
        return pd.Series(self.frame[key].to_numpy()[self.rows], index=self.index, name=key)

    def where(self, keep: np.ndarray) -> RowView:
        return RowView(self.frame, self.rows[np.asarray(keep, dtype=bool)])

    def take(self, keep: np.ndarray, columns: list[str]) -> pd.DataFrame:
        return self.frame.iloc[self.rows[np.asarray(keep, dtype=bool)]][columns]


def direct_dataset(
    frame: pd.DataFrame | RowView,
    kwargs: dict[str, Any],
    fitted: Any = None,
    min_prediction_idx: int | None = None,
    columns: list[str] | None = None,
) -> Any:
    """The `TimeSeriesDataSet` the stock constructor would build over `frame` (sorted by series and
    time_idx, gap-free), without running its pandas preprocessing over every row.

    With ``fitted=None`` (training): the categorical encoders, the target normalizer and the covariate
    scalers are fitted here exactly as the stock ``_preprocess_data`` fits them (the same pytorch-
    forecasting/sklearn calls on the same values, one column at a time), then a stock dataset is built on
    the first window of every series with those fitted objects (it fits nothing more), and its tensors
    and sample index are replaced by the whole frame's, computed column by column with the same
    transforms. With ``fitted`` (a dataset from this function): an evaluation dataset with its fitted
    parameters, as ``TimeSeriesDataSet.from_dataset(fitted, frame, min_prediction_idx=...)`` gives.
    tests/tft/test_loader.py asserts tensors, index, parameters and batches equal the stock build's.
    """
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import MultiNormalizer
    from pytorch_forecasting.data.timeseries._timeseries import check_for_nonfinite
    from sklearn.preprocessing import StandardScaler

    if fitted is not None:
        kwargs = {"target": fitted.target, "max_encoder_length": fitted.max_encoder_length,
                  "max_prediction_length": fitted.max_prediction_length}  # fmt: skip
    targets = list(kwargs["target"]) if isinstance(kwargs["target"], list | tuple) else [kwargs["target"]]
    E, P = int(kwargs["max_encoder_length"]), int(kwargs["max_prediction_length"])
    frame = frame if isinstance(frame, RowView) else RowView(frame)
    columns = list(columns or frame.frame.columns)
    if fitted is not None and min_prediction_idx is not None:
        frame = frame.where(frame["time_idx"].to_numpy() >= min_prediction_idx - E)
    series = frame["series"]
    if fitted is None:
        encoders = kwargs["categorical_encoders"]
        for name, enc in encoders.items():  # as the stock fit: np.unique of the column's values
            source = "series" if name == "__group_id__series" else name
            enc.fit(pd.Series(pd.unique(frame[source]), name=source))
    else:
        encoders = fitted._categorical_encoders
    X = pd.DataFrame({"series": encode_codes(encoders["series"], series)}, index=frame.index)
    group_codes = encode_codes(encoders["__group_id__series"], series)
    del series
    normalizer = kwargs["target_normalizer"] if fitted is None else fitted.target_normalizer
    norms = dict(
        zip(targets, normalizer.normalizers if isinstance(normalizer, MultiNormalizer) else [normalizer])
    )
    if fitted is None:  # the stock fit: MultiNormalizer on the (rows, targets) frame, else on the Series
        normalizer.fit(frame[targets] if len(targets) > 1 else frame[targets[0]], X)
    scale_cols = {f"{t}_{k}": (t, j) for t in targets for j, k in enumerate(("center", "scale"))}
    norm_of: dict[str, np.ndarray] = {}

    def row_scales(t: str) -> np.ndarray:
        """(rows, 2) center and scale of each row's group: what the stock transform uses and returns."""
        if t not in norm_of:
            norm_of.clear()  # one target's at a time
            norm_of[t] = group_norm(norms[t], X)
        return norm_of[t]

    def column(name: str) -> Any:
        """One real column before scaling, as the stock preprocessing holds it (float64 where it makes it)."""
        if name in targets:  # the normalized target: the stock transform, one target at a time
            y = frame[name] if len(targets) == 1 else frame[name].to_numpy()
            return np.asarray(norms[name].transform(y, X, target_scale=row_scales(name)), dtype=np.float64)
        if name in scale_cols:  # <target>_center/_scale: each row's group scale, as the transform returns it
            t, j = scale_cols[name]
            return pd.DataFrame({name: row_scales(t)[:, j]}, index=frame.index)
        if name == "relative_time_idx":
            return pd.DataFrame({name: np.zeros(len(frame))}, index=frame.index)
        return frame[[name]]

    if fitted is None:
        real_names = [*kwargs.get("static_reals", []), *scale_cols, *kwargs.get("time_varying_known_reals", []),
                      "relative_time_idx", *kwargs.get("time_varying_unknown_reals", [])]  # fmt: skip
        scalers = {
            name: StandardScaler().fit(column(name))
            for name in dict.fromkeys(real_names)
            if name not in targets
        }
        # The first window of every series: all series (so the group-id encoder learns nothing new), the
        # same first time_idx (min_prediction_idx), one window each.
        first = frame.take(X.groupby("series", sort=False).cumcount().to_numpy() < E + P, columns)
        template = TimeSeriesDataSet(first, **{**kwargs, "scalers": scalers})
        del first
    else:
        template = copy.copy(fitted)
        template.min_prediction_idx = min_prediction_idx
        template.randomize_length = None
    ds = copy.copy(template)
    n = len(frame)
    reals = np.empty((n, len(ds.reals)), dtype=np.float32)
    for j, name in enumerate(ds.reals):
        values = column(name)
        scaler = None if name in targets else ds._scalers.get(name)
        if scaler is not None:
            values = scaler.transform(values)
        reals[:, j] = np.asarray(values, dtype=np.float64).reshape(-1)
        del values
        if not np.isfinite(reals[:, j]).all():  # the stock check, on this column only
            check_for_nonfinite(torch.from_numpy(reals[:, j].copy()), name)
    norm_of.clear()
    cats = np.empty((n, len(ds.flat_categoricals)), dtype=np.int64)
    for j, name in enumerate(ds.flat_categoricals):
        cats[:, j] = encode_codes(encoders[name], frame[name])
    time = frame["time_idx"].to_numpy(np.int64)

    def target_tensor(t: str) -> torch.Tensor:
        col = frame[t]
        if col.dtype.kind in "bi":
            return torch.from_numpy(col.to_numpy(np.int64, copy=True))
        return torch.from_numpy(col.to_numpy(np.float32))

    ds.data = {
        "reals": torch.from_numpy(reals),
        "categoricals": torch.from_numpy(cats),
        "groups": torch.from_numpy(group_codes[:, None].copy()),
        "target": [target_tensor(t) for t in targets],
        "weight": None,
        "time": torch.from_numpy(time),
    }
    for t, target in zip(targets, ds.data["target"]):
        if target.is_floating_point() and not bool(torch.isfinite(target).all()):
            check_for_nonfinite(target, t)
    ds.index = window_index(ds, group_codes, time)
    return ds


def window_index(ds: Any, codes: np.ndarray, time: np.ndarray) -> pd.DataFrame:
    """``ds._construct_index`` for fixed encoder/prediction lengths over gap-free series stored
    contiguously in increasing group-code order, vectorized (the stock one walks every row in Python
    without numba); anything else goes to the stock construction."""
    L = int(ds.max_encoder_length + ds.max_prediction_length)
    fixed = (
        ds.min_encoder_length == ds.max_encoder_length
        and ds.min_prediction_length == ds.max_prediction_length
    )
    n = len(codes)
    new = np.ones(n, dtype=bool)
    new[1:] = codes[1:] != codes[:-1]
    heads = np.flatnonzero(new)
    gap_free = bool((np.diff(time)[~new[1:]] == 1).all())
    if not (fixed and n and gap_free and (np.diff(codes[heads]) > 0).all()):
        frame = pd.DataFrame({"__group_id__series": codes, "__time_idx__": time})
        return ds._construct_index(frame, predict_mode=False)
    group = np.cumsum(new) - 1  # = groupby(...).ngroup(): groups in increasing code order
    last_time = time[np.r_[heads[1:], n] - 1][group]
    length = np.minimum(L, last_time - time + 1)
    keep = np.flatnonzero((length >= L) & (length + time >= ds.min_prediction_idx + ds.min_prediction_length))
    assert len(keep) > 0, (
        "filters should not remove entries all entries - check encoder/decoder lengths and lags"
    )
    return pd.DataFrame({
        "index_start": keep, "index_end": keep + L - 1, "sequence_length": length[keep],
        "time": time[keep], "sequence_id": group[keep],
    }).astype("int32")  # fmt: skip


class MetricsDataModule(ZooDataModule):
    """Server metrics (or any multi-series table) for the TFT family.

    Args (besides the shared loader settings of `ZooDataModule`):
        source: ``synthetic`` | ``file`` (Parquet/CSV/JSON, with ``columns``) | ``alibaba`` | ``bitbrains`` |
            ``nab`` | ``ett`` (the public traces' own layouts; ``path`` points at them).
        path, format, read_kwargs: the file (or glob/folder) and extra ``pandas.read_*`` arguments.
        columns: zoo name -> source column (``timestamp``, ``series``, each target and covariate).
        timestamp_unit: unit of numeric timestamps (``s``, ``ms``...).
        targets: columns to forecast (several: multi-target).
        known_reals / unknown_reals / static_reals / static_categoricals: covariates from the table;
            ``host`` (the original series id) is a valid static categorical.
        calendar: known calendar features (hour, weekday, hour_sin, hour_cos, weekday_sin, weekday_cos, is_weekend).
        lags / rolling: lagged targets and trailing rolling mean/std windows (in steps); unknown reals.
        step: resampling step (``5min``); max_gap: gaps up to this long are forward-filled, longer ones
            split the series.
        duplicates: ``error`` | ``mean`` for repeated timestamps in a series.
        encoder_length / prediction_length: window lengths in steps.
        val_fraction / test_fraction: the last fractions of every series (a time cutoff per series), or
        split_rows: ``[train, val, test]`` rows from each series' start (ETTh1's standard 12/4/4 months).
        standardize: z-normalize targets and covariates with training-split statistics (ETT protocol;
            metrics are then on that scale).
        target_normalizer: ``group`` (per-series GroupNormalizer fitted on the training split) or
            ``encoder`` (EncoderNormalizer: every window scaled by its own history, which follows level
            shifts such as ETT's; both loaders reproduce it).
        target_transformation: normalizer transformation (null, softplus, log1p, relu).
        channel_independent: forecast every target as its own series (``<series>/<target>``, one
            univariate model shared by all channels, the channel a static categorical) instead of all
            targets jointly (ETTh1's default; docs/benchmarks/tft.md compares the two).
        season: seasonal period for seasonal-naive baselines and MASE (``1D``).
        eval_stride: keep every n-th validation/test window (they overlap by design).
        loader: ``fast`` (precomputed, `WindowBatches`) | ``stock`` (TimeSeriesDataSet + its collate).
        max_series: keep the first N series (after sorting by id).
        drop_short_series: drop series shorter than encoder+prediction instead of failing.
        synthetic: settings of `zoo.tft.sources.synthetic_hosts`.
        url, queries, start, end, series_labels, pull: ``source=prometheus`` (`zoo.tft.prometheus`): the
            server, target -> PromQL expression (node_exporter defaults), the time range (unix seconds, a
            date or ``now-7d``; aligned to ``step``), the labels identifying a series, and the
            `zoo.tft.prometheus.PullSettings` (parallel queries, retries, points per query).
    """

    family = "tft"

    def __init__(
        self,
        source: str = "synthetic",
        path: str | None = None,
        format: str | None = None,
        read_kwargs: dict[str, Any] | None = None,
        columns: dict[str, str] | None = None,
        timestamp_unit: str | None = None,
        targets: list[str] | str | None = None,
        known_reals: list[str] | None = None,
        unknown_reals: list[str] | None = None,
        static_reals: list[str] | None = None,
        static_categoricals: list[str] | None = None,
        calendar: list[str] | None = None,
        lags: list[int] | None = None,
        rolling: list[int] | None = None,
        step: str = "5min",
        max_gap: str = "15min",
        duplicates: str = "error",
        encoder_length: int = 96,
        prediction_length: int = 24,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_rows: list[int] | None = None,
        standardize: bool = False,
        target_normalizer: str = "group",
        target_transformation: str | None = None,
        channel_independent: bool = False,
        season: str = "1D",
        eval_stride: int = 1,
        loader: str = "fast",
        max_series: int | None = None,
        drop_short_series: bool = False,
        synthetic: dict[str, Any] | None = None,
        url: str | None = None,
        queries: dict[str, str] | None = None,
        start: Any = None,
        end: Any = None,
        series_labels: list[str] | None = None,
        pull: dict[str, Any] | None = None,
        name: str = "metrics",
        **loader_kwargs: Any,
    ):
        super().__init__(**loader_kwargs)
        if source not in SOURCES:
            raise ZooError(f"data.source={source}: expected one of {', '.join(SOURCES)}")
        if source not in ("synthetic", "prometheus") and not path:
            raise ZooError(f"data.source={source} needs data.path")
        if duplicates not in ("error", "mean"):
            raise ZooError(f"data.duplicates={duplicates}: expected error or mean")
        if target_normalizer not in ("group", "encoder"):
            raise ZooError(f"data.target_normalizer={target_normalizer}: expected group or encoder")
        if channel_independent and (lags or rolling):
            raise ZooError(
                "data.channel_independent=true forecasts each target alone: drop data.lags and data.rolling "
                "(lagged copies of the other targets would leak across channels)"
            )
        if loader not in ("fast", "stock"):
            raise ZooError(f"data.loader={loader}: expected fast or stock")
        if int(encoder_length) <= 0 or int(prediction_length) <= 0:
            raise ZooError(
                f"data.encoder_length={encoder_length} and data.prediction_length={prediction_length} must be positive"
            )
        if split_rows is None and not (
            0.0 < val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0
        ):
            raise ZooError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in [0, 1) and sum below 1"
            )
        targets = [targets] if isinstance(targets, str) else list(targets or S.DEFAULT_TARGETS)
        if not targets:
            raise ZooError("data.targets is empty: name at least one column to forecast")
        self.settings: dict[str, Any] = {
            "source": source, "path": path, "format": format, "read_kwargs": dict(read_kwargs or {}),
            "columns": dict(columns or {}), "timestamp_unit": timestamp_unit, "targets": targets,
            "known_reals": list(known_reals or []), "unknown_reals": list(unknown_reals or []),
            "static_reals": list(static_reals or []), "calendar": list(calendar or []),
            "lags": [int(v) for v in lags or []], "rolling": [int(v) for v in rolling or []],
            "step": step, "max_gap": max_gap, "duplicates": duplicates, "max_series": max_series,
            "drop_short_series": drop_short_series, "synthetic": dict(synthetic or {}),
            "min_length": int(encoder_length) + int(prediction_length),
        }  # fmt: skip
        if source == "prometheus":  # the resolved range and queries name the cache (a new range: a new pull)
            from zoo.tft import prometheus as prom

            self.prometheus = prom.make_source(url, queries, targets, start, end, step, series_labels, pull)
            self.settings["prometheus"] = self.prometheus.key()
            self.resumable_cache = True  # a killed pull keeps its finished chunks in the .tmp folder
        if path and source != "synthetic":  # a changed file must not reuse a stale cache
            p = Path(path).expanduser()
            if not p.exists() and not any(c in str(p) for c in "*?["):
                raise ZooError(f"data.path={p}: no such file")
            if p.exists():
                st = p.stat()
                self.settings["path_stat"] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
        self.static_categoricals = list(static_categoricals if static_categoricals is not None else [])
        self.encoder_length, self.prediction_length = int(encoder_length), int(prediction_length)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_rows = [int(v) for v in split_rows] if split_rows else None
        self.standardize = bool(standardize)
        self.target_normalizer = target_normalizer
        self.target_transformation = target_transformation
        self.channel_independent = bool(channel_independent)
        self.season = season
        self.eval_stride = max(1, int(eval_stride))
        self.loader = loader
        self.name = name
        self.targets = targets
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
        from pytorch_forecasting.data import (
            EncoderNormalizer,
            GroupNormalizer,
            MultiNormalizer,
            NaNLabelEncoder,
        )

        self._load()
        assert self.frame is not None
        where = f"data ({self.name})"
        self.cutoffs = self.split_points()
        frame = self.frame
        # The training rows as a mask, their columns copied out one at a time (RowView): pytorch-forecasting
        # copies what it is given several times over, which on a fleet was most of the peak memory.
        in_train = (frame["time_idx"] <= frame["series"].map(self.cutoffs["train"])).to_numpy()
        if self.standardize:
            cols = [
                *self.targets,
                *self.settings["known_reals"],
                *self.settings["unknown_reals"],
                *self.settings["static_reals"],
            ]
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
        min_len = self.encoder_length + self.prediction_length
        sizes = frame["series"][in_train].value_counts()
        in_train &= frame["series"].isin(sizes.index[sizes >= min_len]).to_numpy()
        if not in_train.any():
            raise ZooError(
                f"{where}: no series has encoder_length+prediction_length={min_len} steps before its validation cutoff"
            )
        train_rows, train_columns = RowView(frame, in_train), self.dataset_columns(frame)
        del in_train
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
        kwargs = dict(
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
        # The fast loader's datasets skip pytorch-forecasting's frame-wide preprocessing (several copies
        # of the training rows, most of a fleet's peak memory and setup time): same tensors, index and
        # fitted parameters (tests/tft/test_loader.py). data.loader=stock keeps the stock build.
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
