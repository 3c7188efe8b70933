"""The forecasts operations teams already use, as baselines beside naive and seasonal-naive
(`zoo.tft.evaluate`): each sees exactly the window's encoder history (the ``encoder_length`` steps the TFT
sees) and nothing after the forecast origin. Parameters are fixed here, before any scoring.

- ``linear``: Prometheus' ``predict_linear`` — an ordinary least-squares line through the history, extended
  ``h`` steps past the last sample (``predict_linear(v[<encoder window>], h * step)``).
- ``holt``: Holt's double exponential smoothing as Prometheus 2's ``holt_winters`` (3.x:
  ``double_exponential_smoothing``) computes it — level ``s_0 = y_0``, trend ``b_0 = y_1 - y_0``, then for
  ``i >= 1``: ``s_i = a y_i + (1 - a)(s_{i-1} + b_{i-1})``, ``b_i = b (s_i - s_{i-1}) + (1 - b) b_{i-1}`` —
  with smoothing factor ``a = HOLT_ALPHA`` and trend factor ``b = HOLT_BETA``; the forecast ``h`` steps
  ahead is ``s + h b`` (``holt_winters`` returns the smoothed level ``s``; the trend extends it).
"""

from __future__ import annotations

import torch

HOLT_ALPHA = 0.3
"""Holt's smoothing factor (``holt_winters(v, 0.3, 0.1)``): the level follows a third of each new sample."""
HOLT_BETA = 0.1
"""Holt's trend factor: the trend follows a tenth of each level change."""
NAMES = ("naive", "snaive", "linear", "holt")
"""Every baseline scored beside the model, in table order."""
CHUNK = 65_536
"""Windows per gather ([CHUNK, encoder_length] floats at a time, so a fleet's evaluation stays bounded)."""


def linear_trend(history: torch.Tensor, horizon: int) -> torch.Tensor:
    """Least-squares line through history [N, W] (x = 0..W-1) evaluated at x = W-1+h, h = 1..horizon -> [N, horizon]."""
    y = history.double()
    W = y.shape[1]
    x = torch.arange(W, dtype=torch.float64)
    xc = x - x.mean()
    slope = (y - y.mean(1, keepdim=True)) @ xc / (xc @ xc) if W > 1 else torch.zeros(len(y), dtype=y.dtype)
    intercept = y.mean(1) - slope * x.mean()  # value at x = 0
    at = W - 1 + torch.arange(1, horizon + 1, dtype=torch.float64)
    return (intercept[:, None] + slope[:, None] * at[None]).to(history.dtype)


def holt(
    history: torch.Tensor, horizon: int, alpha: float = HOLT_ALPHA, beta: float = HOLT_BETA
) -> torch.Tensor:
    """Holt's forecast (module docstring) from history [N, W] -> [N, horizon], all windows at once."""
    y = history.double()
    if y.shape[1] < 2:
        return y[:, -1:].expand(-1, horizon).to(history.dtype).clone()
    level, trend = y[:, 0], y[:, 1] - y[:, 0]
    for i in range(1, y.shape[1]):
        previous = level
        level = alpha * y[:, i] + (1 - alpha) * (level + trend)
        trend = beta * (level - previous) + (1 - beta) * trend
    h = torch.arange(1, horizon + 1, dtype=torch.float64)
    return (level[:, None] + trend[:, None] * h[None]).to(history.dtype)


def from_history(
    values: torch.Tensor, first: torch.Tensor, length: int, horizon: int
) -> dict[str, torch.Tensor]:
    """``linear`` and ``holt`` forecasts [N, horizon] of windows whose history is values[first : first + length]
    (a flat per-row tensor of one target), gathered CHUNK windows at a time."""
    out: dict[str, list[torch.Tensor]] = {"linear": [], "holt": []}
    steps = torch.arange(length)
    for lo in range(0, len(first), CHUNK):
        history = values[first[lo : lo + CHUNK, None] + steps[None]].float()
        out["linear"].append(linear_trend(history, horizon))
        out["holt"].append(holt(history, horizon))
    return {k: torch.cat(v) if v else torch.zeros(0, horizon) for k, v in out.items()}


def verdicts(metrics: dict[str, float], targets: list[str]) -> dict[str, dict[str, object]]:
    """Per target: the baseline with the lowest MAE and whether the model beats it (lower MAE), from the
    ``<target>/<label>/mae`` keys of `metrics`; ``rel_mae_vs_best`` is the model's MAE over the best one's."""
    out = {}
    for name in targets:
        scores = {b: metrics[f"{name}/{b}/mae"] for b in NAMES if f"{name}/{b}/mae" in metrics}
        if not scores:
            continue
        best = min(scores, key=lambda b: scores[b])
        model = metrics[f"{name}/tft/mae"]
        rel = model / scores[best] if scores[best] > 0 else float("nan")
        out[name] = {"best_baseline": best, "baseline_mae": scores[best], "tft_mae": model,
                     "rel_mae_vs_best": rel, "beats_best": bool(model < scores[best])}  # fmt: skip
    return out


def verdict_lines(table: dict[str, dict[str, object]]) -> list[str]:
    """One plain sentence per target for the console and the eval folder."""
    lines = []
    for name, v in table.items():
        head = f"{name}: best baseline {v['best_baseline']} (MAE {v['baseline_mae']:.4g}); the TFT's MAE {v['tft_mae']:.4g}"
        if v["beats_best"]:
            lines.append(f"{head} beats it ({v['rel_mae_vs_best']:.3f}x)")
        else:
            lines.append(f"{head} does NOT beat it ({v['rel_mae_vs_best']:.3f}x its MAE)")
    return lines
