"""Walk-forward backtest of the next-event protocol: the model as it would run when deployed on a log
that drifts, retrained at regular origins on everything known by then.

The evaluated split's prefixes are cut into ``cutoffs`` periods of equal count by *prediction time* (the
time of the prefix's last event). At the start ``c`` of each period, a copy of the trained network is
fine-tuned for ``steps`` steps on every sample of the whole log (training, validation and the evaluated
split's own earlier cases alike) whose targets are known at ``c``: its target window stops at the first
event at or after ``c``, and the end-of-case token counts once the case's last event is before ``c`` (an
approximation: a live system learns that a case ended a little later). Samples are drawn with weights
halving every ``half_life_days`` before ``c`` (uniform when null). Then that period's prefixes are scored.

Beside the fine-tuned model, by the same code and on the same prefixes: the trained model without
fine-tuning (``static``: its overall score is the ordinary protocol's) and the bigram baseline refitted at
each origin on the same known samples, so the drift itself and what plain refitting recovers are visible.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from zoo.events.datamodule import SPLITS, EventWindows, first_flagged
from zoo.events.evaluate import baseline_predictions, fit_baselines, model_predictions, prefixes, score
from zoo.events.model import objective


def known_samples(dm: Any, cutoff: float) -> tuple[EventWindows, np.ndarray]:
    """Every sample of the log whose targets (some of them) are known at `cutoff` (seconds), truncated
    to those; and per sample, the time of its last known event (its prediction time)."""
    a, event_s = dm.arrays, dm.event_seconds()
    t = np.concatenate([a[f"{s}_t"] for s in SPLITS])
    end = np.concatenate([a[f"{s}_end"] for s in SPLITS])
    eoc = np.concatenate([a[f"{s}_eoc"] for s in SPLITS])
    # A case's events are in time order: its first event at or after the cutoff ends what is known.
    known_end = np.minimum(end, first_flagged(event_s >= cutoff, t))
    known_eoc = eoc & (known_end == end) & (event_s[end - 1] < cutoff)
    keep = (known_end > t) | known_eoc
    t, known_end, known_eoc = t[keep], known_end[keep], known_eoc[keep]
    ds = dm.datasets["train"]
    windows = EventWindows(ds.ids, ds.dt, ds.case_start, t, known_end, known_eoc, ds.S, ds.T)
    return windows, event_s[t - 1].astype(np.float64)


def fine_tune(
    net: torch.nn.Module,
    windows: EventWindows,
    weights: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    time_loss_weight: float,
    seed: int,
    device: str | torch.device,
) -> torch.nn.Module:
    """A copy of `net` after `steps` Adam steps on batches drawn from `windows` by `weights`."""
    net = copy.deepcopy(net).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=g).tolist()
        b = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v)
            for k, v in windows.__getitems__(idx).items()
        }
        loss, _ = objective(net, b, time_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return net.eval()


def walk_forward(
    module: Any,
    dm: Any,
    split: str = "test",
    cutoffs: int = 4,
    steps: int = 200,
    lr: float | None = None,
    half_life_days: float | None = 90.0,
    batch_size: int | None = None,
    seed: int = 1337,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """``backtest/{model,static,bigram}/<metric>`` over the whole split and per period
    (``backtest/period<k>/...``), plus each period's origin date."""
    if not dm.datasets:
        dm.setup()
    names = dm.schema.names
    target = names.index(dm.schema.target)
    ds = dm._split(split)
    event_s = dm.event_seconds()
    when = event_s[ds.t - 1]
    # Equal-count periods; an origin is the first prediction time of its period.
    order = np.argsort(when, kind="stable")
    periods = np.array_split(order, max(1, int(cutoffs)))
    lr = float(lr if lr is not None else module.optim.lr)
    batch_size = int(batch_size or dm.batch_size)
    time_weight = float(getattr(module, "time_loss_weight", 0.0))
    parts: dict[str, list[Any]] = {"data": [], "model": [], "static": [], "bigram": []}
    metrics: dict[str, float] = {"backtest/cutoffs": float(len(periods)), "backtest/steps": float(steps)}
    for k, rows in enumerate(periods):
        if len(rows) == 0:
            continue
        rows = np.sort(rows)
        origin = float(when[rows].min())
        period = EventWindows(
            ds.ids, ds.dt, ds.case_start, ds.t[rows], ds.end[rows], ds.eoc[rows], ds.S, ds.T
        )
        data = prefixes(period)
        known, known_when = known_samples(dm, origin)
        if half_life_days:
            weights = torch.from_numpy(0.5 ** ((origin - known_when) / 86400.0 / float(half_life_days)))
        else:
            weights = torch.ones(len(known), dtype=torch.float64)
        tuned = module.net
        if steps > 0 and len(known):
            tuned = fine_tune(
                module.net, known, weights, steps, lr, batch_size, time_weight, seed + k, device
            )
        preds = {
            "model": model_predictions(tuned, period, device=device),
            "static": model_predictions(module.net, period, device=device),
            "bigram": baseline_predictions(fit_baselines(prefixes(known), target), data, target)["bigram"],
        }
        metrics[f"backtest/period{k}/origin_days"] = origin / 86400.0
        metrics[f"backtest/period{k}/known_samples"] = float(len(known))
        parts["data"].append(data)
        for who, pred in preds.items():
            parts[who].append(pred)
            for key, value in score(pred, data, names, target).items():
                metrics[f"backtest/period{k}/{who}/{key}"] = value
    data = {key: np.concatenate([d[key] for d in parts["data"]]) for key in ("next", "dt")}
    for who in ("model", "static", "bigram"):
        pred = {key: np.concatenate([p[key] for p in parts[who]]) for key in ("next", "dt")}
        for key, value in score(pred, data, names, target).items():
            metrics[f"backtest/{who}/{key}"] = value
    return metrics
