"""Forecasts from new data: the frame is resampled and featurized exactly as the training data was,
then the trained network (PyTorch, or ``model.onnx`` in onnxruntime) predicts every quantile of the next
`prediction_length` steps of each series.

    python -m zoo.predict ckpt_path=<checkpoint | run folder | export folder> input=recent.csv [output=...]
        [backend=onnx] [plot=false]

writes forecast.csv (one row per series, target and future timestamp: ``point`` and every ``q<level>``)
and forecast.png. In Python: ``forecast(TFTModule.from_export(folder), frame)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo.core.errors import ZooError


def required_covariates(module: Any) -> list[str]:
    """The covariate columns new data must bring: the model's reals other than the targets and what the
    zoo derives itself (calendar, lags/rolling statistics, the channel-independent ``value``)."""
    from zoo.tft import sources as S

    spec, params = module.preprocess, module.dataset_parameters
    targets = spec["targets"]
    derived = {*targets, *(spec.get("calendar") or []), S.CHANNEL_VALUE if spec.get("channels") else None}
    for t in targets:
        derived |= {f"{t}_lag{lag}" for lag in spec.get("lags") or []}
        derived |= {f"{t}_{stat}{w}" for w in spec.get("rolling") or [] for stat in ("mean", "std")}
    reals = [*(params.get("static_reals") or []), *(params.get("time_varying_known_reals") or []),
             *(params.get("time_varying_unknown_reals") or [])]  # fmt: skip
    return list(dict.fromkeys(c for c in reals if c not in derived))


def _span(td: pd.Timedelta) -> str:
    seconds = td.total_seconds()
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


def check_step(df: pd.DataFrame, step: str, where: str) -> None:
    """Refuse series sampled more coarsely than the model's step: resampling them would leave holes
    between the samples (finer samples are averaged into step bins, as the training data was)."""
    freq = pd.Timedelta(step)
    ordered = df[["series", "timestamp"]].sort_values(["series", "timestamp"]).reset_index(drop=True)
    ordered["gap"] = ordered.groupby("series", sort=True)["timestamp"].diff()
    typical = ordered.dropna(subset=["gap"]).groupby("series", sort=True)["gap"].median()
    coarse = typical[typical > freq * 1.1]  # 10 %: a collector's timing jitter is not another step
    if len(coarse):
        raise ZooError(
            f"{where}: series '{coarse.index[0]}' is sampled every {_span(coarse.iloc[0])}, but the model forecasts "
            f"in steps of {step} (data.step): give samples at most {step} apart ({len(coarse)} such series)"
        )


def check_columns(module: Any, df: pd.DataFrame, where: str) -> None:
    targets = module.preprocess["targets"]
    covariates = required_covariates(module)
    missing = [c for c in ["timestamp", *targets, *covariates] if c not in df.columns]
    if missing:
        role = {c: "covariate" for c in covariates} | {c: "target" for c in targets} | {"timestamp": "time"}
        detail = ", ".join(f"'{c}' ({role[c]})" for c in missing)
        raise ZooError(
            f"{where}: missing column(s) {detail}; available columns: {', '.join(map(str, df.columns))} "
            f"(map yours with columns.<name>=<your column>)"
        )


def recent_stretch(module: Any, df: pd.DataFrame, where: str = "forecast input") -> pd.DataFrame:
    """New data checked and resampled to the model's step, keeping each series' latest gap-free stretch
    (the one a forecast continues), named after the series; in the data's own units."""
    from zoo.tft import sources as S

    spec = module.preprocess
    targets = spec["targets"]
    covariates = required_covariates(module)
    df = df.copy()
    if "series" not in df.columns:
        df["series"] = "series0"
    check_columns(module, df, where)
    df["timestamp"] = S.to_timestamps(df["timestamp"], None, where)
    df = S.validate(df, targets, covariates, where)
    check_step(df, spec["step"], where)
    max_gap = int(pd.Timedelta(spec["max_gap"]) // pd.Timedelta(spec["step"])) if spec.get("max_gap") else 0
    frame = S.regularize(df, spec["step"], [*targets, *covariates], max_gap, where)
    # A gap longer than max_gap split a series into segments; the forecast continues the last one.
    seg_end = frame.groupby("series")["timestamp"].transform("max")
    frame = frame[seg_end == frame.groupby("host")["timestamp"].transform("max")].copy()
    frame["series"] = frame["host"]
    return frame.sort_values(["series", "timestamp"]).reset_index(drop=True)


def prepare_frame(module: Any, df: pd.DataFrame, where: str = "forecast input") -> pd.DataFrame:
    """Resample and featurize new data exactly as the training data was: the last `encoder_length` steps
    of every series' latest gap-free stretch, with one-line errors for what a forecast cannot use."""
    from zoo.tft import sources as S

    spec = module.preprocess
    targets = spec["targets"]
    E = module.encoder_length
    frame = recent_stretch(module, df, where)
    frame, _ = S.add_time_index(frame, spec["step"], spec.get("origin"))
    S.add_calendar(frame, spec.get("calendar", []))
    _, warmup = S.add_lags(frame, targets, spec.get("lags", []), spec.get("rolling", []))
    lengths = frame.groupby("series", sort=True).size()
    short = lengths[lengths < E + warmup]
    if len(short):
        extra = f" + {warmup} warm-up steps for data.lags/data.rolling" if warmup else ""
        raise ZooError(
            f"{where}: series '{short.index[0]}' has {int(short.iloc[0])} steps of {spec['step']} after resampling "
            f"(since its last gap longer than {spec.get('max_gap')}); the model needs encoder_length={E}{extra} "
            f"({len(short)} such series)"
        )
    if warmup:
        frame = frame[frame.groupby("series").cumcount() >= warmup]
    frame = frame.groupby("series", sort=True).tail(E)  # only the encoder window is read
    for c, (mu, sd) in (spec.get("scaler") or {}).items():
        if c in frame.columns:
            frame[c] = (frame[c] - mu) / sd
    if spec.get("channels"):
        frame = S.melt_channels(frame, spec["channels"])
    return frame.reset_index(drop=True)


def known_series(module: Any) -> set[str] | None:
    """Series ids the model was trained on (its group encoder's classes); None when it does not say."""
    encoders = module.dataset_parameters.get("categorical_encoders") or {}
    enc = encoders.get("__group_id__series") or encoders.get("series")
    classes = getattr(enc, "classes_", None)
    if not classes:
        return None
    return {str(k) for k in classes if isinstance(k, str) and k != "nan"}


def _unknown_series_encodable(module: Any) -> bool:
    encoders = module.dataset_parameters.get("categorical_encoders") or {}
    enc = encoders.get("__group_id__series")
    return enc is None or bool(getattr(enc, "add_nan", False))


def _window_quantiles(module: Any, batches: Any, onnx: Any, batch_size: int = 256) -> list[Any]:
    """Raw quantile forecasts per target, [windows, P, levels]: the PyTorch network or `onnx`."""
    import torch

    if onnx is None:
        return module.predict_batches(batches, batch_size=batch_size)["quantiles"]
    parts: list[list[Any]] = [[] for _ in module.target_names]
    for start in range(0, len(batches), batch_size):
        x, _ = batches.__getitems__(list(range(start, min(len(batches), start + batch_size))))
        for t, q in enumerate(onnx(x)):
            parts[t].append(q.float())
    return [torch.cat(p) for p in parts]


def _with_future_steps(module: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the next `prediction_length` steps of every series appended (their calendar features
    generated; unknown inputs are not read in the decoder and keep their last value, so the frame stays
    rectangular)."""
    from zoo.tft import sources as S

    spec, P = module.preprocess, module.prediction_length
    step = pd.Timedelta(spec["step"])
    last = frame.groupby("series", sort=True).tail(1)
    offsets = np.arange(1, P + 1)
    fut = last.loc[last.index.repeat(P)].reset_index(drop=True)
    fut["timestamp"] = fut["timestamp"] + step * np.tile(offsets, len(last))
    fut["time_idx"] = fut["time_idx"] + np.tile(offsets, len(last))
    S.add_calendar(fut, spec.get("calendar", []))
    return pd.concat([frame, fut[frame.columns]], ignore_index=True)


def _forecast_rows(module: Any, ds: Any, raw: list[Any], new_series: str | None, unknown: list[str],
                   raw_quantiles: bool) -> list[pd.DataFrame]:  # fmt: skip
    """`forecast`'s rows of one dataset's windows from their raw quantiles `raw` (per target [W, P, L]):
    calibrated bands, the point read from the raw quantiles, both back in the data's units. Built as
    arrays, one block per target, not a dict per row: a fleet's 500 series x 4 targets x P steps x 7
    quantiles took most of a monitor round as Python objects."""
    spec, P = module.preprocess, module.prediction_length
    scaler = spec.get("scaler") or {}
    starts, ends = ds.index["index_start"].to_numpy(), ds.index["index_end"].to_numpy()
    first = ds.data["time"][ends].numpy() - P + 1
    if new_series:  # encoded as the unknown class, which does not decode: the name it came with
        window_series = [new_series] * len(starts)
    else:
        classes = ds.categorical_encoders["__group_id__series"].classes_
        name_of = {code: str(name) for name, code in classes.items()}
        window_series = [name_of[int(c)] for c in ds.data["groups"][starts, 0]]
    # Calibrated bands (zoo.tft.calibrate); the point forecast is read from the raw quantiles.
    channels = [s.rsplit("/", 1)[-1] for s in window_series] if spec.get("channels") else None
    calibrated = module.calibrated(raw, channels)
    W = len(window_series)
    pairs = [str(s).rsplit("/", 1) for s in window_series] if spec.get("channels") else None
    known = np.repeat([s not in unknown for s in window_series], P)
    steps, time_idx = np.tile(np.arange(1, P + 1), W), (first[:, None] + np.arange(P)[None]).ravel()
    blocks = []
    for t, target in enumerate(module.target_names):
        # channel-independent: `<series>/<target>` back to its series and target
        out_series, names = (
            ([a for a, _ in pairs], [b for _, b in pairs]) if pairs else (window_series, [target] * W)
        )
        mu = np.array([scaler.get(n, (0.0, 1.0))[0] for n in names], dtype=np.float64)[:, None]
        sd = np.array([scaler.get(n, (0.0, 1.0))[1] for n in names], dtype=np.float64)[:, None]
        q = calibrated[t].detach().cpu().double().numpy()
        point = module.point_of(raw[t]).detach().cpu().double().numpy()
        block: dict[str, Any] = {"series": np.repeat(np.array(out_series, dtype=object), P),
                                 "target": np.repeat(np.array(names, dtype=object), P), "step": steps,
                                 "time_idx": time_idx.astype(np.int64), "point": (point * sd + mu).ravel()}  # fmt: skip
        for k, level in enumerate(module.quantiles):
            block[f"q{level:g}"] = (q[..., k] * sd + mu).ravel()
            if raw_quantiles:
                block[f"raw_q{level:g}"] = (raw[t][..., k].detach().cpu().double().numpy() * sd + mu).ravel()
        block["known_series"] = known
        blocks.append(pd.DataFrame(block))
    return blocks


def forecast(
    module: Any,
    df: pd.DataFrame,
    *,
    onnx: Any = None,
    where: str = "forecast input",
    raw_quantiles: bool = False,
) -> pd.DataFrame:
    """Quantile forecasts of the next `prediction_length` steps after the end of every series in `df`
    (at least `encoder_length` recent steps each). Known covariates are calendar features, generated
    for the future steps here. Returns one row per series, step and target: ``point`` (``model.point`` of
    the raw quantiles) and the quantile columns ``q<level>``, calibrated where the module has a band
    calibration (`zoo.tft.calibrate`), and ``known_series`` (False: a series the model never saw, forecast
    with the unknown-series encoding and the median training scale of its group normalizer).

    `onnx`: an `zoo.tft.export.OnnxForecaster` (or the path of a ``model.onnx``) that computes the raw
    quantiles instead of the PyTorch network; everything before and after it is the same code.
    `raw_quantiles`: also the network's own quantiles, ``raw_q<level>`` (what `zoo.monitor` refits the
    calibration from)."""
    from pytorch_forecasting import TimeSeriesDataSet

    from zoo.tft.fastpath import StockBatches, WindowBatches

    if onnx is not None and not callable(onnx):
        from zoo.tft.export import OnnxForecaster

        onnx = OnnxForecaster(onnx, module)
    spec = module.preprocess
    step = pd.Timedelta(spec["step"])
    full = _with_future_steps(module, prepare_frame(module, df, where))
    seen = known_series(module)
    unknown = sorted(set(full["series"]) - seen) if seen is not None else []
    if unknown and not _unknown_series_encodable(module):
        raise ZooError(
            f"{where}: series '{unknown[0]}' was not in the training data and this model has no encoding for unknown "
            f"series ({len(unknown)} such); forecast series it was trained on"
        )
    # Every series the model never saw is encoded as the same unknown group, so each gets its own dataset
    # (in one dataset they would merge into one series); the known ones share one.
    parts = [(full[~full["series"].isin(unknown)], None)] + [(full[full["series"] == s], s) for s in unknown]
    rows: list[pd.DataFrame] = []
    for part, new_series in parts:
        if part.empty:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = TimeSeriesDataSet.from_parameters(
                module.dataset_parameters, part.reset_index(drop=True), predict=True
            )
        try:
            batches: Any = WindowBatches(ds)
        except ZooError:  # EncoderNormalizer models: the stock path
            batches = StockBatches(ds)
        rows += _forecast_rows(
            module, ds, _window_quantiles(module, batches, onnx), new_series, unknown, raw_quantiles
        )
    out = pd.concat(rows, ignore_index=True)
    out["timestamp"] = pd.Timestamp(spec["origin"]) + step * out["time_idx"]
    head = ["series", "target", "timestamp", "step", "time_idx", "point"]
    out = out[[*head, *[c for c in out.columns if c not in head]]]
    order = {name: k for k, name in enumerate(spec.get("channels") or module.target_names)}
    out = out.assign(_target=out["target"].map(order)).sort_values(["series", "_target", "step"])
    return out.drop(columns="_target").reset_index(drop=True)


# -- python -m zoo.predict --------------------------------------------------------------------------------
def read_input(path: Path) -> pd.DataFrame:
    """The ``input=`` table: CSV, Parquet or JSON(-lines), by suffix, or a ``zoo.collect`` folder (its rows)."""
    kind = path.suffix.lower().lstrip(".")
    if path.is_dir():
        from zoo.tft.collect import read

        frame = read(path)
        if frame is None or len(frame) == 0:
            raise ZooError(f"input={path}: a folder, but no samples of python -m zoo.collect in it")
        return frame
    if not path.is_file():
        raise ZooError(f"input={path}: no such file (expected a .csv or .parquet of recent metrics)")
    if path.stat().st_size == 0:
        raise ZooError(f"input={path}: the file is empty (expected a header row and recent samples)")
    try:
        if kind in ("parquet", "pq"):
            return pd.read_parquet(path)
        if kind in ("csv", "txt"):
            return pd.read_csv(path)
        if kind in ("json", "jsonl", "ndjson"):
            return pd.read_json(path, lines=kind != "json")
    except Exception as err:
        raise ZooError(
            f"input={path}: cannot read it as {kind} ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        ) from err
    raise ZooError(f"input={path}: unknown format '{kind}' (expected .csv, .parquet or .json)")


def map_input_columns(df: pd.DataFrame, columns: dict[str, Any], where: str) -> pd.DataFrame:
    """The training run's column mapping (zoo name -> source column), where the input uses the source
    names; an input already in the zoo's names is taken as it is."""
    rename = {}
    for name, source in (columns or {}).items():
        if source is None or source == name or name in df.columns:
            continue
        if source in df.columns:
            rename[source] = name
        elif name in ("timestamp", "series"):
            raise ZooError(
                f"{where}: no column '{source}' (the {name} column, data.columns.{name}) nor '{name}'; available "
                f"columns: {', '.join(map(str, df.columns))} (map yours with columns.{name}=<your column>)"
            )
    return df.rename(columns=rename)


def plot_forecast(
    history: pd.DataFrame, fc: pd.DataFrame, path: Path, quantiles: list[float], max_series: int = 6
) -> Path:
    """Recent history, the point forecast and the quantile bands, one panel per series and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted(fc["series"].unique())
    targets = list(dict.fromkeys(fc["target"]))
    shown = series[:max_series]
    fig, axes = plt.subplots(
        len(shown), len(targets), figsize=(4.2 * len(targets), 2.6 * len(shown)), squeeze=False
    )
    outer = (f"q{quantiles[0]:g}", f"q{quantiles[-1]:g}")
    inner = ("q0.1", "q0.9")
    for r, s in enumerate(shown):
        past = history[history["series"] == s]
        for c, target in enumerate(targets):
            ax = axes[r][c]
            part = fc[(fc["series"] == s) & (fc["target"] == target)]
            if target in past.columns:
                ax.plot(past["timestamp"], past[target], color="black", lw=1, label="history")
            ax.fill_between(part["timestamp"], part[outer[0]], part[outer[1]], color="tab:blue", alpha=0.15,
                            label=f"P{100 * quantiles[0]:g}-P{100 * quantiles[-1]:g}")  # fmt: skip
            ax.fill_between(
                part["timestamp"],
                part[inner[0]],
                part[inner[1]],
                color="tab:blue",
                alpha=0.3,
                label="P10-P90",
            )
            ax.plot(part["timestamp"], part["point"], color="tab:blue", lw=1.5, label="forecast")
            ax.set_title(f"{s} / {target}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.tick_params(axis="x", rotation=30)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if len(series) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(series)} series (all are in the CSV)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _onnx_forecaster(module: Any, run: Any) -> Any:
    """``backend=onnx``: the export folder's ONNX network (a checkpoint has none: say how to make one)."""
    from zoo.tft.export import ONNX_FILE, OnnxForecaster

    if run.export_dir is None:
        raise ZooError(
            f"backend=onnx needs an export folder with {ONNX_FILE}, not the checkpoint {run.path}: run "
            f"python -m zoo.export ckpt_path={run.path} format=onnx, then predict with ckpt_path=<that folder>"
        )
    return OnnxForecaster(Path(run.export_dir) / ONNX_FILE, module)


def _read_request(cfg: Any, run: Any, path: Path, where: str) -> pd.DataFrame:
    """The input file, its columns mapped (``columns=``, else the training data's) and timestamps parsed."""
    from omegaconf import OmegaConf

    data_cfg = run.config.get("data") if run.config is not None else None
    columns = cfg.get("columns") or (data_cfg.get("columns") if data_cfg is not None else None) or {}
    columns = OmegaConf.to_container(columns) if OmegaConf.is_config(columns) else dict(columns)
    df = map_input_columns(read_input(path), columns, where)
    unit = data_cfg.get("timestamp_unit") if data_cfg is not None else None
    if "timestamp" in df.columns:
        from zoo.tft import sources as S

        df["timestamp"] = S.to_timestamps(
            df["timestamp"], unit, where, columns.get("timestamp") or "timestamp"
        )
    return df


def _place(module: Any, device: str) -> None:
    """``device=`` for the torch backend: cpu (as loaded), auto (cuda when there is one) or a device name."""
    if device == "cpu":
        return
    import torch

    module.to(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )


def _write_table(fc: pd.DataFrame, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    table = fc.drop(columns=["time_idx"])
    if output.suffix.lower() in (".parquet", ".pq"):
        table.to_parquet(output, index=False)
    else:
        table.to_csv(output, index=False)


def _report(
    module: Any, fc: pd.DataFrame, backend: str, output: Path, figure: Path | None, output_dir: Path
) -> None:
    """predict_summary.json, and the one-line summary (plus a note on series the model never saw)."""
    from zoo.core.run import write_json

    new = sorted(fc.loc[~fc["known_series"], "series"].unique())
    summary = {"series": int(fc["series"].nunique()), "targets": list(dict.fromkeys(fc["target"])),
               "horizon": module.prediction_length, "step": module.preprocess["step"], "rows": len(fc),
               "backend": backend, "unknown_series": new, "output": str(output),
               "figure": str(figure) if figure else None}  # fmt: skip
    write_json(Path(output_dir) / "predict_summary.json", summary)
    print(
        f"[zoo] forecast of {summary['series']} series x {len(summary['targets'])} targets x {module.prediction_length} "
        f"steps of {module.preprocess['step']} ({backend}) -> {output}"
        + (f" (+ {figure.name})" if figure else "")
    )
    if new:
        print(
            f"[zoo] note: {len(new)} series not in the training data ({', '.join(new[:5])}{', ...' if len(new) > 5 else ''}): "
            "forecast with the unknown-series encoding and the median training scale (known_series=false in the CSV)"
        )


def predict_command(module: Any, cfg: Any, output_dir: Path, run: Any) -> pd.DataFrame:
    """``python -m zoo.predict ckpt_path=... input=recent.csv [output=...] [backend=onnx] [plot=false]``."""
    if not cfg.get("input"):
        raise ZooError(
            "input= is required: a .csv or .parquet of recent rows (timestamp, series, targets, covariates)"
        )
    path = Path(str(cfg.input)).expanduser()
    where = f"input={path}"
    backend = str(cfg.get("backend", "torch"))
    onnx = _onnx_forecaster(module, run) if backend == "onnx" else None
    df = _read_request(cfg, run, path, where)
    if backend == "torch":
        _place(module, str(cfg.get("device", "cpu")))
    module._cpu_threads()
    try:
        fc = forecast(module, df, onnx=onnx, where=where)
    finally:
        module._restore_threads()
    output = Path(str(cfg.output)).expanduser() if cfg.get("output") else Path(output_dir) / "forecast.csv"
    _write_table(fc, output)
    figure = None
    if cfg.get("plot", True):
        history = (
            recent_stretch(module, df, where)
            .groupby("series")
            .tail(max(module.encoder_length, 2 * module.prediction_length))
        )
        figure = plot_forecast(history, fc, output.with_suffix(".png"), module.quantiles)
    _report(module, fc, backend, output, figure, output_dir)
    return fc
