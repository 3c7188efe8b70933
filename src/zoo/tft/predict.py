"""Forecasts from new data: the frame is resampled and featurized exactly as the training data was,
then the trained network predicts every quantile of the next `prediction_length` steps of each series."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from zoo.core.errors import ZooError


def prepare_frame(module: Any, df: pd.DataFrame) -> pd.DataFrame:
    """Resample and featurize new data exactly as the training data was."""
    from zoo.tft import sources as S

    spec = module.preprocess
    targets = spec["targets"]
    params = module.dataset_parameters
    covariates = [c for c in [*(params.get("static_reals") or []), *(params.get("time_varying_known_reals") or []),
                              *(params.get("time_varying_unknown_reals") or [])]
                  if c in df.columns and c not in targets]  # fmt: skip
    df = df.copy()
    if "series" not in df.columns:
        df["series"] = "series0"
    df = S.validate(df, targets, covariates, "forecast input")
    max_gap = int(pd.Timedelta(spec["max_gap"]) // pd.Timedelta(spec["step"])) if spec.get("max_gap") else 0
    frame = S.regularize(df, spec["step"], [*targets, *covariates], max_gap, "forecast input")
    frame, _ = S.add_time_index(frame, spec["step"], spec.get("origin"))
    S.add_calendar(frame, spec.get("calendar", []))
    _, warmup = S.add_lags(frame, targets, spec.get("lags", []), spec.get("rolling", []))
    if warmup:
        frame = frame[frame.groupby("series").cumcount() >= warmup]
    for c, (mu, sd) in (spec.get("scaler") or {}).items():
        if c in frame.columns:
            frame[c] = (frame[c] - mu) / sd
    if spec.get("channels"):
        frame = S.melt_channels(frame, spec["channels"])
    return frame.reset_index(drop=True)


def forecast(module: Any, df: pd.DataFrame) -> pd.DataFrame:
    """Quantile forecasts of the next `prediction_length` steps after the end of every series in `df`
    (at least `encoder_length` recent steps each). Known covariates are calendar features, generated
    for the future steps here. Returns one row per series, step and target."""
    from pytorch_forecasting import TimeSeriesDataSet

    from zoo.tft.datamodule import StockBatches, WindowBatches

    spec = module.preprocess
    frame = prepare_frame(module, df)
    step = pd.Timedelta(spec["step"])
    P = module.prediction_length
    future = []
    for series, part in frame.groupby("series", sort=True):
        last = part.iloc[-1]
        stamps = last["timestamp"] + step * pd.RangeIndex(1, P + 1)
        fut = pd.DataFrame({"timestamp": stamps, "series": series, "host": last["host"]})
        fut["time_idx"] = last["time_idx"] + pd.RangeIndex(1, P + 1)
        for c in part.columns:
            if c not in fut.columns:
                fut[c] = last[c]  # unknown inputs are not read in the decoder; keep the frame rectangular
        future.append(fut)
    from zoo.tft import sources as S

    fut = pd.concat(future, ignore_index=True)
    S.add_calendar(fut, spec.get("calendar", []))
    full = pd.concat([frame, fut[frame.columns]], ignore_index=True)
    rows = []
    scaler = spec.get("scaler") or {}
    # One dataset per series: every host the model never saw is encoded as the same unknown group, so
    # several new hosts in one dataset would be merged into one series.
    for series, part in full.groupby("series", sort=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = TimeSeriesDataSet.from_parameters(
                module.dataset_parameters, part.reset_index(drop=True), predict=True
            )
        try:
            batches: Any = WindowBatches(ds)
        except ZooError:  # EncoderNormalizer models: the stock path
            batches = StockBatches(ds)
        result = module.predict_batches(batches)
        first = int(batches.time[batches.starts[0]]) + module.encoder_length
        for t, name in enumerate(module.target_names):
            q = result["quantiles"][t][0]
            out_series = series
            if spec.get("channels"):  # channel-independent: `<series>/<target>` back to its series and target
                out_series, name = str(series).rsplit("/", 1)
            mu, sd = scaler.get(name, (0.0, 1.0))
            for h in range(P):
                row = {"series": out_series, "target": name, "step": h + 1, "time_idx": first + h}
                for k, level in enumerate(module.quantiles):
                    row[f"q{level:g}"] = float(q[h, k]) * sd + mu
                rows.append(row)
    out = pd.DataFrame(rows)
    origin = pd.Timestamp(spec["origin"]) if spec.get("origin") else None
    if origin is not None:
        out["timestamp"] = origin + step * out["time_idx"]
    return out
