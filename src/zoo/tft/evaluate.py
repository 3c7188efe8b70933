"""Forecast evaluation: per-target MAE, RMSE, MSE, sMAPE, MASE, P10-P90 and P2-P98 coverage and pinball
loss of the TFT beside naive (last value), seasonal-naive, ``predict_linear``-style least-squares trend
(``linear``) and Holt's double exponential smoothing (``holt``; `zoo.tft.baselines`) on exactly the same
windows, the best baseline named per target (and said plainly when the model does not beat it), a
walk-forward backtest over N forecast origins, and figures (forecast vs actual with the calibrated
quantile bands; variable importances and attention) written as PNGs and logged to TensorBoard.

Bands are scored with the module's calibration (`zoo.tft.calibrate`; fitted on the validation split here
when the checkpoint carries none) and without it: ``<target>/tft/coverage_p10_p90``, ``coverage_p2_p98``
and ``pinball`` are the calibrated bands', the ``*_raw`` keys the network's own, the ``*_rolling`` keys
those of the same calibration refitted walk-forward over the split (`rolling_bands`). Point forecasts always
come from the raw quantiles (calibration leaves the median alone; the quantiles' mean would move).

MASE divides each series' absolute errors by that series' in-sample seasonal-naive MAE on its training
split (the M4 definition). ``rel_mae_vs_snaive`` is the model's MAE over the seasonal-naive MAE on the
same windows: below 1 means the model beats the baseline; ``rel_mae_vs_best`` divides by the best
baseline's MAE of that target.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.tft import baselines as B
from zoo.tft import sources as S

BASELINES = B.NAMES


def _metrics(pred: torch.Tensor, actual: torch.Tensor, scale: torch.Tensor) -> dict[str, float]:
    err = pred - actual
    denom = pred.abs() + actual.abs()
    smape = torch.where(denom > 0, 2 * err.abs() / denom.clamp_min(1e-12), torch.zeros_like(denom))
    return {
        "mae": float(err.abs().mean()),
        "mse": float((err**2).mean()),
        "rmse": float(math.sqrt(float((err**2).mean()))),
        "smape": float(100 * smape.mean()),
        "mase": float((err.abs() / scale[:, None]).mean()),
    }


def quantile_mean(q: torch.Tensor, levels: list[float]) -> torch.Tensor:
    """Mean of the forecast distribution from its quantiles [..., len(levels)]: the midpoint-rule integral
    of the quantile function over (0, 1), each quantile standing for the probability between its
    neighbours' midpoints. The median is the MAE-optimal point forecast; this is the MSE-optimal one."""
    lv = torch.tensor(levels, dtype=q.dtype, device=q.device)
    edges = torch.cat([lv.new_zeros(1), (lv[1:] + lv[:-1]) / 2, lv.new_ones(1)])
    return (q * torch.diff(edges)).sum(-1)


def baselines(dm: Any, split: str, rows: torch.Tensor, E: int, P: int, season: int) -> dict[str, Any]:
    """Naive, seasonal-naive, linear-trend and Holt forecasts for windows starting at dataset rows `rows`,
    and which windows have a full season of history before their forecast origin (only those are scored)."""
    arrays = dm.series_arrays(split)
    origin = rows + E  # first forecast row
    h = torch.arange(1, P + 1)
    lag = torch.tensor([S.seasonal_lag(int(k), season) for k in h])
    src = origin[:, None] + (h - 1)[None] - lag[None]
    valid = src.min(dim=1).values >= arrays["series_start"][rows]
    src = src.clamp_min(0)
    naive = [t[origin - 1][:, None].expand(-1, P).float() for t in arrays["targets"]]
    snaive = [t[src].float() for t in arrays["targets"]]
    fits = [B.from_history(t, rows, E, P) for t in arrays["targets"]]  # the encoder window only
    return {"naive": naive, "snaive": snaive, "linear": [f["linear"] for f in fits],
            "holt": [f["holt"] for f in fits], "valid": valid}  # fmt: skip


def mase_scales(dm: Any, split: str, series: list[str], season: int) -> dict[str, torch.Tensor]:
    """Per target: each window's series' in-sample seasonal-naive MAE on the training split."""
    frame = dm.frame
    cut = frame["series"].map(dm.cutoffs["train"])
    train = frame[frame["time_idx"] <= cut]
    out = {}
    for name in dm.model_targets:
        per_series = {}
        for key, part in train.groupby("series"):
            y = part[name].to_numpy(dtype=np.float64)
            m = season if len(y) > season else 1
            d = np.abs(y[m:] - y[:-m]) if len(y) > m else np.array([1.0])
            per_series[key] = float(d.mean()) if d.size and d.mean() > 0 else 1.0
        out[name] = torch.tensor([per_series.get(s, 1.0) for s in series], dtype=torch.float32)
    return out


def band_metrics(metrics: dict[str, float], name: str, actual: torch.Tensor, levels: list[float],
                 bands: dict[str, torch.Tensor | None]) -> None:  # fmt: skip
    """P10-P90 / P2-P98 coverage and pinball of each of `bands` (key suffix -> quantiles [N, P, L], None:
    skipped) into `metrics` as ``<name>/tft/<metric><suffix>``."""
    from zoo.tft.calibrate import coverage, pinball

    for suffix, q in bands.items():
        if q is None:
            continue
        for lo, hi in ((0.1, 0.9), (0.02, 0.98)):
            c = coverage(q, actual, levels, lo, hi)
            if c is not None:
                metrics[f"{name}/tft/coverage_p{lo * 100:g}_p{hi * 100:g}{suffix}"] = c
        metrics[f"{name}/tft/pinball{suffix}"] = pinball(q, actual, levels)


def rolling_bands(module: Any, dm: Any, split: str, result: dict[str, Any], channels: list[str] | None,
                  val: dict[str, Any] | None = None) -> list[torch.Tensor] | None:  # fmt: skip
    """The split's bands calibrated walk-forward (`zoo.tft.calibrate.rolling_calibrated`), seeded with the
    validation windows (`val`: their `predict_batches`, when already made); None for the validation split
    itself or a module without a calibration."""
    from zoo.tft.calibrate import rolling_calibrated

    if split == "val" or split not in dm.datasets or module.calibration is None:
        return None
    val = val if val is not None else module.predict_batches(dm.batches("val"))
    vindex = dm.datasets["val"].decoded_index
    seed = {"quantiles": val["quantiles"], "actual": val["actual"],
            "origin": torch.as_tensor(vindex["time_idx_first_prediction"].to_numpy()[: val["n"]]),
            "channels": None if channels is None else [str(s).rsplit("/", 1)[-1] for s in vindex["series"].tolist()[: val["n"]]]}  # fmt: skip
    index = dm.datasets[split].decoded_index
    windows = {"quantiles": result["quantiles"], "actual": result["actual"], "channels": channels,
               "origin": torch.as_tensor(index["time_idx_first_prediction"].to_numpy()[: result["n"]])}  # fmt: skip
    return rolling_calibrated(module.calibration, windows, seed, module.target_names)


def _score_group(metrics: dict[str, float], name: str, module: Any, q: torch.Tensor, actual: torch.Tensor,
                 scale: torch.Tensor, base: dict[str, torch.Tensor], bands: dict[str, Any]) -> None:  # fmt: skip
    """One target's (or channel's) metrics into `metrics`: the TFT's point (``model.point``) and quantile
    mean and every baseline of `base` (name -> forecasts), the MAE ratio to seasonal-naive, the bands'
    coverage and pinball loss."""
    preds = (("tft", module.point_of(q)), ("tft_mean", quantile_mean(q, module.quantiles)),
             *((b, base[b]) for b in BASELINES))  # fmt: skip
    for label, pred in preds:
        for k, v in _metrics(pred, actual, scale).items():
            metrics[f"{name}/{label}/{k}"] = v
    band_metrics(metrics, name, actual, module.quantiles, bands)
    snaive_mae = metrics[f"{name}/snaive/mae"]
    metrics[f"{name}/tft/rel_mae_vs_snaive"] = (
        metrics[f"{name}/tft/mae"] / snaive_mae if snaive_mae > 0 else float("nan")
    )


def score(module: Any, dm: Any, split: str, limit: int | None = None, rolling: bool = True,
          val: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Predictions, baselines and metrics of one split (the windows with a seasonal history); with
    `rolling`, the bands calibrated walk-forward too (``*_rolling`` keys; `val`: the validation split's
    `predict_batches`, when already made, and then also the predictions of ``split="val"``)."""
    batches = dm.batches(split)
    if split == "val" and val is not None and limit is None:
        result = dict(val)  # already predicted (the calibration fit's windows)
    else:
        result = module.predict_batches(batches, limit=limit)
    n = result["n"]
    rows = batches.starts[:n]
    E, P = module.encoder_length, module.prediction_length
    season = dm.season_steps
    base = baselines(dm, split, rows, E, P, season)
    valid = base["valid"]
    if not bool(
        valid.any()
    ):  # no window has a season of history: score all, seasonal-naive falls back to naive
        valid = torch.ones_like(valid)
        base["snaive"] = base["naive"]
    ds = dm.datasets[split if split in dm.datasets else "val"]
    series = ds.decoded_index["series"].tolist()[:n]
    channel_independent = getattr(dm, "channel_independent", False)
    channels = [str(s).rsplit("/", 1)[-1] for s in series] if channel_independent else None
    result["calibrated"] = module.calibrated(result["quantiles"], channels)
    result["rolling"] = rolling_bands(module, dm, split, result, channels, val) if rolling else None
    roll = result["rolling"] or [None] * len(module.target_names)
    scales = mase_scales(dm, split, series, season)
    metrics: dict[str, float] = {}
    for t, name in enumerate(module.target_names):
        q, rolled = result["quantiles"][t][valid], None if roll[t] is None else roll[t][valid]
        bands = {"": result["calibrated"][t][valid], "_raw": q, "_rolling": rolled}
        _score_group(metrics, name, module, q, result["actual"][t][valid], scales[name][valid],
                     {b: base[b][t][valid] for b in BASELINES}, bands)  # fmt: skip
    if channel_independent:  # the one target `value` broken down by channel
        channel = np.array(channels)[valid.numpy()]
        cal = result["calibrated"][0][valid]
        rolled = None if roll[0] is None else roll[0][valid]
        q, actual = result["quantiles"][0][valid], result["actual"][0][valid]
        scale = scales[module.target_names[0]][valid]
        channel_base = {b: base[b][0][valid] for b in BASELINES}
        for name in dm.targets:
            sel = torch.as_tensor(channel == name)
            if not bool(sel.any()):
                continue
            bands = {"": cal[sel], "_raw": q[sel], "_rolling": None if rolled is None else rolled[sel]}
            _score_group(metrics, name, module, q[sel], actual[sel], scale[sel],
                         {b: v[sel] for b, v in channel_base.items()}, bands)  # fmt: skip
    for label in ("tft", "tft_mean", *BASELINES):
        for k in ("mae", "mse", "rmse", "smape", "mase"):
            metrics[f"all/{label}/{k}"] = float(
                np.mean([metrics[f"{t}/{label}/{k}"] for t in module.target_names])
            )
    metrics["all/tft/rel_mae_vs_snaive"] = float(
        np.mean([metrics[f"{t}/tft/rel_mae_vs_snaive"] for t in module.target_names])
    )
    verdicts = B.verdicts(metrics, [*module.target_names, *(dm.targets if channel_independent else [])])
    for name, v in verdicts.items():
        metrics[f"{name}/tft/rel_mae_vs_best"] = float(v["rel_mae_vs_best"])
    for key in [k.split("/", 2)[2] for k in metrics if k.startswith(f"{module.target_names[0]}/tft/") and ("coverage" in k or "pinball" in k)]:  # fmt: skip
        metrics[f"all/tft/{key}"] = float(np.mean([metrics[f"{t}/tft/{key}"] for t in module.target_names]))
    metrics["calibrated"] = float(module.calibration is not None)
    metrics["windows"] = float(valid.sum())
    return {
        "metrics": metrics,
        "result": result,
        "baselines": base,
        "valid": valid,
        "series": series,
        "channels": channels,
        "rows": rows,
        "verdicts": verdicts,
    }


def backtest(
    module: Any, dm: Any, split: str, scored: dict[str, Any], cutoffs: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Walk-forward: N forecast origins spread over the split (at least a horizon apart where the split
    allows), each scored on every series' window starting there."""
    ds = dm.datasets[split if split in dm.datasets else "val"]
    first = torch.as_tensor(ds.decoded_index["time_idx_first_prediction"].to_numpy()[: scored["result"]["n"]])
    valid = scored["valid"]
    origins = torch.unique(first[valid])
    if cutoffs <= 0 or len(origins) == 0:
        return {}, []
    P = module.prediction_length
    chosen: list[int] = []
    for o in reversed(origins.tolist()):  # latest first, then step back at least one horizon
        if not chosen or chosen[-1] - o >= P:
            chosen.append(o)
        if len(chosen) == cutoffs:
            break
    chosen.reverse()
    point = module.point_of
    # (name, target index, windows): every target, and with data.channel_independent each channel of `value`.
    parts = [(name, t, None) for t, name in enumerate(module.target_names)]
    if scored.get("channels") is not None:
        channel = np.array(scored["channels"])
        parts += [(name, 0, torch.as_tensor(channel == name)) for name in dm.targets]
    table = []
    for k, origin in enumerate(chosen):
        at = valid & (first == origin)
        row: dict[str, Any] = {"cutoff": k, "time_idx": origin, "windows": int(at.sum())}
        for name, t, mask in parts:
            sel = at if mask is None else at & mask
            actual = scored["result"]["actual"][t][sel]
            row[f"{name}/tft/mae"] = float(
                (point(scored["result"]["quantiles"][t][sel]) - actual).abs().mean()
            )
            for b in BASELINES:
                row[f"{name}/{b}/mae"] = float((scored["baselines"][b][t][sel] - actual).abs().mean())
        table.append(row)
    summary = {"backtest/cutoffs": float(len(table))}
    for name, _, _ in parts:
        model = float(np.mean([r[f"{name}/tft/mae"] for r in table]))
        base = float(np.mean([r[f"{name}/snaive/mae"] for r in table]))
        summary[f"backtest/{name}/tft/mae"] = model
        summary[f"backtest/{name}/snaive/mae"] = base
        summary[f"backtest/{name}/rel_mae_vs_snaive"] = model / base if base > 0 else float("nan")
        for b in ("naive", "linear", "holt"):
            summary[f"backtest/{name}/{b}/mae"] = float(np.mean([r[f"{name}/{b}/mae"] for r in table]))
        best = min(BASELINES, key=lambda b: summary[f"backtest/{name}/{b}/mae"])
        ref = summary[f"backtest/{name}/{best}/mae"]
        summary[f"backtest/{name}/rel_mae_vs_best"] = model / ref if ref > 0 else float("nan")
    return summary, table


def evaluate_module(
    module: Any, dm: Any, split: str, output_dir: Path, backtest_cutoffs: int = 4
) -> dict[str, float]:
    dm.setup()
    val = None
    if module.calibration is None:  # a checkpoint from before calibration, or one saved mid-training
        from zoo.tft.calibrate import fit_module

        # Predicted once: the fit and the walk-forward bands' seed are the same windows.
        val = module.predict_batches(dm.batches("val"))
        module.calibration = fit_module(module, dm, "val", val)
        print(
            f"[zoo] band calibration fitted on the validation split ({module.calibration.windows} windows): the checkpoint carried none"
        )
    scored = score(module, dm, split, val=val)
    metrics = dict(scored["metrics"])
    summary, table = backtest(module, dm, split, scored, backtest_cutoffs)
    metrics.update(summary)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "baselines.json").write_text(json.dumps(scored["verdicts"], indent=2))
    for line in B.verdict_lines(scored["verdicts"]):
        print(f"[zoo] {line}")
    if table:
        with open(output_dir / "backtest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(output_dir / "tensorboard"))
    try:
        write_figures(module, dm, split, output_dir / "plots", writers=[writer])
        for k, v in metrics.items():
            if math.isfinite(v):
                writer.add_scalar(f"eval/{k}", v, 0)
    finally:
        writer.close()
    return metrics


# -- figures --------------------------------------------------------------------------------------------
def write_figures(module: Any, dm: Any, split: str, folder: Path, loggers: Any = (), writers: Any = (), step: int = 0,
                  n_series: int = 3) -> list[Path]:  # fmt: skip
    """forecast.png (last window of a few series, every target, median and P10-P90/P2-P98 bands) and
    interpretation.png (variable importances, attention over the encoder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    batches = dm.batches(split)
    ds = dm.datasets[split if split in dm.datasets else "val"]
    index = ds.decoded_index
    picks = [int(i) for i in index.reset_index(drop=True).groupby("series").tail(1).index[:n_series]]
    x, y = batches.__getitems__(picks)
    module.eval()
    with torch.no_grad():
        xd = {
            k: ([t.to(module.device) for t in v] if isinstance(v, list) else v.to(module.device))
            for k, v in x.items()
        }
        out = module.net(xd)
    channels = (
        [str(index["series"].iloc[i]).rsplit("/", 1)[-1] for i in picks]
        if getattr(dm, "channel_independent", False)
        else None
    )
    qs = module.calibrated([q.cpu() for q in module.quantile_forecast(out)], channels)
    enc_t = x["encoder_target"] if module.multi_target else [x["encoder_target"]]
    dec_t = y[0] if module.multi_target else [y[0]]
    T = len(module.target_names)
    fig, axes = plt.subplots(len(picks), T, figsize=(3.6 * T, 2.4 * len(picks)), squeeze=False)
    E, P = module.encoder_length, module.prediction_length
    levels = module.quantiles
    for r, _ in enumerate(picks):
        for t, name in enumerate(module.target_names):
            ax = axes[r][t]
            ax.plot(range(-E, 0), enc_t[t][r].numpy(), color="0.4", lw=0.8, label="history")
            ax.plot(range(P), dec_t[t][r].numpy(), color="k", lw=1.0, label="actual")
            q = qs[t][r].numpy()
            for lo, hi, alpha in ((0.02, 0.98, 0.15), (0.1, 0.9, 0.3)):
                if lo in levels and hi in levels:
                    ax.fill_between(
                        range(P),
                        q[:, levels.index(lo)],
                        q[:, levels.index(hi)],
                        color="C0",
                        alpha=alpha,
                        lw=0,
                    )
            ax.plot(range(P), q[:, levels.index(0.5)], color="C0", lw=1.2, label="median")
            ax.set_title(f"{index['series'].iloc[picks[r]]} {name}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    paths = [folder / "forecast.png"]
    fig.savefig(paths[0], dpi=90)
    figures = {"forecast": fig}
    # Interpretation over up to 256 windows.
    n = min(len(batches), 256)
    x, _ = batches.__getitems__(list(range(n)))
    with torch.no_grad():
        xd = {
            k: ([t.to(module.device) for t in v] if isinstance(v, list) else v.to(module.device))
            for k, v in x.items()
        }
        out = module.net(xd)
        interp = module.net.interpret_output(out, reduction="sum")
    fig2, axes2 = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, key, names in ((axes2[0], "static_variables", module.net.static_variables),
                           (axes2[1], "encoder_variables", module.net.encoder_variables),
                           (axes2[2], "decoder_variables", module.net.decoder_variables)):  # fmt: skip
        values = interp[key].float().cpu()
        values = (values / values.sum().clamp_min(1e-12) * 100).numpy()
        order = np.argsort(values)
        ax.barh([names[i] for i in order], values[order], color="C1")
        ax.set_title(key.replace("_", " ") + " (%)", fontsize=9)
        ax.tick_params(labelsize=7)
    att = interp["attention"].float().cpu()
    att = (att / att.sum().clamp_min(1e-12)).numpy()
    axes2[3].plot(np.arange(-len(att), 0), att)
    axes2[3].set_title("attention over encoder steps", fontsize=9)
    fig2.tight_layout()
    paths.append(folder / "interpretation.png")
    fig2.savefig(paths[1], dpi=90)
    figures["interpretation"] = fig2
    experiments = [
        lg.experiment for lg in loggers or () if hasattr(getattr(lg, "experiment", None), "add_figure")
    ]
    for w in [*experiments, *(writers or ())]:
        for name, f in figures.items():
            w.add_figure(f"tft/{name}", f, global_step=step, close=False)
    for f in figures.values():
        plt.close(f)
    return paths
