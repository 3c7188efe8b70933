"""The pytorch-forecasting fast path: batches and datasets built from `TimeSeriesDataSet`'s own tensors,
index and fitted normalizers instead of its per-window ``__getitem__`` and frame-wide preprocessing.

This is the one module that reads pytorch-forecasting's private API (``_data``, ``_scalers``,
``_construct_index``, ``_collate_fn``, ``norm._groups``...), the reason for the exact
``pytorch-forecasting==1.8.0`` pin: when the pin moves, re-verify this file with its parity tests
(tests/tft/test_fastpath.py: bitwise-equal batches, datasets and normalizers against the stock path).

- `WindowBatches`: the stock dataset's tensors and sample index turned into gather indices once; a batch
  is a handful of tensor indexing operations instead of ``batch_size`` calls of
  ``TimeSeriesDataSet.__getitem__`` plus ``_collate_fn`` (pytorch-forecasting issues #715, #1426, #1849).
  EncoderNormalizer targets (ETTh1) are scaled per window inside the batch, vectorized, instead of the
  stock path's fit + sklearn transform per window. `StockBatches` is the stock path (``data.loader=stock``).
- `direct_dataset`: the stock `TimeSeriesDataSet` (same tensors, index and parameters) for group
  normalizers, without the frame-wide preprocessing that held several copies of a fleet's rows.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from zoo.core.errors import ZooError


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
    order of operations, so the values are bitwise the same (tests/tft/test_fastpath.py).
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


class _Columns:
    """The frame's real columns as the stock preprocessing holds them before scaling: the normalized targets,
    each row's group center and scale (``<target>_center/_scale``), ``relative_time_idx``, the rest as is."""

    def __init__(self, frame: RowView, X: pd.DataFrame, targets: list[str], normalizer: Any) -> None:
        from pytorch_forecasting.data import MultiNormalizer

        self.frame, self.X, self.targets = frame, X, targets
        many = normalizer.normalizers if isinstance(normalizer, MultiNormalizer) else [normalizer]
        self.norms = dict(zip(targets, many))
        self.scale_cols = {f"{t}_{k}": (t, j) for t in targets for j, k in enumerate(("center", "scale"))}
        self._scales: dict[str, np.ndarray] = {}

    def row_scales(self, t: str) -> np.ndarray:
        """(rows, 2) center and scale of each row's group: what the stock transform uses and returns."""
        if t not in self._scales:
            self._scales.clear()  # one target's at a time
            self._scales[t] = group_norm(self.norms[t], self.X)
        return self._scales[t]

    def release(self) -> None:
        self._scales.clear()

    def __call__(self, name: str) -> Any:
        """One real column before scaling (float64 where the stock preprocessing makes it)."""
        frame = self.frame
        if name in self.targets:  # the normalized target: the stock transform, one target at a time
            y = frame[name] if len(self.targets) == 1 else frame[name].to_numpy()
            return np.asarray(
                self.norms[name].transform(y, self.X, target_scale=self.row_scales(name)), dtype=np.float64
            )
        if (
            name in self.scale_cols
        ):  # <target>_center/_scale: each row's group scale, as the transform returns it
            t, j = self.scale_cols[name]
            return pd.DataFrame({name: self.row_scales(t)[:, j]}, index=frame.index)
        if name == "relative_time_idx":
            return pd.DataFrame({name: np.zeros(len(frame))}, index=frame.index)
        return frame[[name]]


def _fit_encoders(frame: RowView, encoders: dict[str, Any]) -> dict[str, Any]:
    for name, enc in encoders.items():  # as the stock fit: np.unique of the column's values
        source = "series" if name == "__group_id__series" else name
        enc.fit(pd.Series(pd.unique(frame[source]), name=source))
    return encoders


def _training_template(cols: _Columns, kwargs: dict[str, Any], columns: list[str]) -> Any:
    """Fit the target normalizer and the covariate scalers as the stock ``_preprocess_data`` does, and build
    the stock dataset over the first window of every series with them (it fits nothing more)."""
    from pytorch_forecasting import TimeSeriesDataSet
    from sklearn.preprocessing import StandardScaler

    frame, targets = cols.frame, cols.targets
    normalizer = kwargs["target_normalizer"]
    # the stock fit: MultiNormalizer on the (rows, targets) frame, else on the Series
    normalizer.fit(frame[targets] if len(targets) > 1 else frame[targets[0]], cols.X)
    real_names = [*kwargs.get("static_reals", []), *cols.scale_cols, *kwargs.get("time_varying_known_reals", []),
                  "relative_time_idx", *kwargs.get("time_varying_unknown_reals", [])]  # fmt: skip
    scalers = {
        name: StandardScaler().fit(cols(name)) for name in dict.fromkeys(real_names) if name not in targets
    }
    # The first window of every series: all series (so the group-id encoder learns nothing new), the
    # same first time_idx (min_prediction_idx), one window each.
    length = int(kwargs["max_encoder_length"]) + int(kwargs["max_prediction_length"])
    first = frame.take(cols.X.groupby("series", sort=False).cumcount().to_numpy() < length, columns)
    return TimeSeriesDataSet(first, **{**kwargs, "scalers": scalers})


def _scaled_reals(ds: Any, cols: _Columns) -> np.ndarray:
    """(rows, reals) float32: each real column scaled by the dataset's scaler, checked finite as the stock
    path checks it (one column at a time)."""
    from pytorch_forecasting.data.timeseries._timeseries import check_for_nonfinite

    reals = np.empty((len(cols.frame), len(ds.reals)), dtype=np.float32)
    for j, name in enumerate(ds.reals):
        values = cols(name)
        scaler = None if name in cols.targets else ds._scalers.get(name)
        if scaler is not None:
            values = scaler.transform(values)
        reals[:, j] = np.asarray(values, dtype=np.float64).reshape(-1)
        del values
        if not np.isfinite(reals[:, j]).all():  # the stock check, on this column only
            check_for_nonfinite(torch.from_numpy(reals[:, j].copy()), name)
    cols.release()
    return reals


def _targets(frame: RowView, targets: list[str]) -> list[torch.Tensor]:
    """The raw targets (int64 for integer columns, else float32), non-finite values refused as stock."""
    from pytorch_forecasting.data.timeseries._timeseries import check_for_nonfinite

    out = []
    for t in targets:
        col = frame[t]
        kind = col.dtype.kind
        out.append(
            torch.from_numpy(col.to_numpy(np.int64, copy=True) if kind in "bi" else col.to_numpy(np.float32))
        )
        if out[-1].is_floating_point() and not bool(torch.isfinite(out[-1]).all()):
            check_for_nonfinite(out[-1], t)
    return out


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
    tests/tft/test_fastpath.py asserts tensors, index, parameters and batches equal the stock build's.
    """
    if fitted is not None:
        kwargs = {"target": fitted.target, "max_encoder_length": fitted.max_encoder_length,
                  "max_prediction_length": fitted.max_prediction_length}  # fmt: skip
    targets = list(kwargs["target"]) if isinstance(kwargs["target"], list | tuple) else [kwargs["target"]]
    frame = frame if isinstance(frame, RowView) else RowView(frame)
    columns = list(columns or frame.frame.columns)
    if fitted is not None and min_prediction_idx is not None:
        frame = frame.where(
            frame["time_idx"].to_numpy() >= min_prediction_idx - int(kwargs["max_encoder_length"])
        )
    encoders = (
        _fit_encoders(frame, kwargs["categorical_encoders"])
        if fitted is None
        else fitted._categorical_encoders
    )
    series = frame["series"]
    X = pd.DataFrame({"series": encode_codes(encoders["series"], series)}, index=frame.index)
    group_codes = encode_codes(encoders["__group_id__series"], series)
    del series
    cols = _Columns(
        frame, X, targets, kwargs["target_normalizer"] if fitted is None else fitted.target_normalizer
    )
    if fitted is None:
        template = _training_template(cols, kwargs, columns)
    else:
        template = copy.copy(fitted)
        template.min_prediction_idx = min_prediction_idx
        template.randomize_length = None
    ds = copy.copy(template)
    reals = _scaled_reals(ds, cols)
    cats = np.empty((len(frame), len(ds.flat_categoricals)), dtype=np.int64)
    for j, name in enumerate(ds.flat_categoricals):
        cats[:, j] = encode_codes(encoders[name], frame[name])
    time = frame["time_idx"].to_numpy(np.int64)
    ds.data = {"reals": torch.from_numpy(reals), "categoricals": torch.from_numpy(cats),
               "groups": torch.from_numpy(group_codes[:, None].copy()), "target": _targets(frame, targets),
               "weight": None, "time": torch.from_numpy(time)}  # fmt: skip
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
