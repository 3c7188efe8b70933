"""Next-event evaluation protocol and the two baselines, computed by the same code.

Protocol: cases are split by the log's split column (or the data config's split); for every case of
the evaluated split and every prefix of >= 1 event, predict the next event -- after the last event the
answer is the end-of-case token ``<eoc>`` -- and score the prediction of each field. Next-activity
accuracy is the score of the schema's target field over all those predictions. Time-to-next MAE (days)
is over the predictions whose answer is a real event.

Baselines (fit on the training split's prefixes, exactly as the model is):
    majority -- the most frequent next value of each field; median time to next event
    bigram   -- the most frequent next value given the current event's value of the same field (majority
                where the current value never occurred in training); median time given the current activity

Beside them, ``ceiling/next_activity_acc``: the most frequent next activity for each distinct activity
prefix (its last ``src_seq_len`` activities), counted on the evaluated split itself. No model that reads
only the activity sequence can beat it on that split, so it says how much of a goal the other fields
(resource, time) would have to carry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.events.schema import PAD

Predictions = dict[str, np.ndarray]


def prefixes(dataset: Any, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Position-0 view of a split: current event ids [N, F], source windows [N, S, F] with their lengths
    [N], next-event ids [N, F] and days to the next event [N] (NaN at end of case)."""
    one = dataset.with_target_len(1)
    parts: dict[str, list[np.ndarray]] = {"current": [], "next": [], "dt": [], "src": [], "src_len": []}
    for start in range(0, len(one), batch_size):
        b = one.__getitems__(list(range(start, min(start + batch_size, len(one)))))
        last = (b["src_len"] - 1).clamp(min=0)
        parts["current"].append(b["src"][torch.arange(len(last)), last].numpy())
        parts["next"].append(b["tgt"][:, 0].numpy())
        parts["dt"].append(b["dt"][:, 0].numpy())
        parts["src"].append(b["src"].numpy())
        parts["src_len"].append(b["src_len"].numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


def fit_baselines(train: dict[str, np.ndarray], target: int) -> dict[str, Any]:
    """Tables of the majority and bigram baselines from the training prefixes."""
    n_fields = train["next"].shape[1]
    majority = np.array([np.bincount(train["next"][:, f]).argmax() for f in range(n_fields)])
    bigram: list[dict[int, int]] = []
    for f in range(n_fields):
        table: dict[int, int] = {}
        cur, nxt = train["current"][:, f], train["next"][:, f]
        for value in np.unique(cur):
            table[int(value)] = int(np.bincount(nxt[cur == value]).argmax())
        bigram.append(table)
    real = ~np.isnan(train["dt"])
    median = float(np.median(train["dt"][real])) if real.any() else 0.0
    time_given: dict[int, float] = {}
    cur = train["current"][:, target]
    for value in np.unique(cur):
        sel = real & (cur == value)
        if sel.any():
            time_given[int(value)] = float(np.median(train["dt"][sel]))
    return {"majority": majority, "bigram": bigram, "median": median, "time_given": time_given}


def prefix_counts(data: dict[str, np.ndarray], target: int) -> dict[bytes, dict[int, int]]:
    """Per distinct activity prefix (the source window's target field), the counts of the next activity."""
    valid = data["next"][:, 0] != PAD
    counts: dict[bytes, dict[int, int]] = {}
    for window, n, nxt in zip(data["src"][valid], data["src_len"][valid], data["next"][valid, target]):
        row = counts.setdefault(window[:n, target].tobytes(), {})
        row[int(nxt)] = row.get(int(nxt), 0) + 1
    return counts


def prefix_ceiling(data: dict[str, np.ndarray], target: int) -> float:
    """Accuracy of the most frequent next activity per activity prefix, counted on `data` itself."""
    valid = data["next"][:, 0] != PAD
    hits = sum(max(row.values()) for row in prefix_counts(data, target).values())
    return hits / int(valid.sum()) if valid.any() else float("nan")


def prefix_lookup(fit: dict[str, np.ndarray], data: dict[str, np.ndarray], target: int) -> np.ndarray:
    """Next activity of each prefix of `data`: the most frequent one after the same activity prefix in
    `fit`, else after the same current activity there (the bigram), else `fit`'s most frequent."""
    table = {k: max(row, key=row.get) for k, row in prefix_counts(fit, target).items()}
    tables = fit_baselines(fit, target)
    bigram, default = tables["bigram"][target], int(tables["majority"][target])
    return np.array([table.get(window[:n, target].tobytes(), bigram.get(int(cur), default))
                     for window, n, cur in zip(data["src"], data["src_len"], data["current"][:, target])], dtype=np.int64)  # fmt: skip


def baseline_predictions(
    tables: dict[str, Any], data: dict[str, np.ndarray], target: int
) -> dict[str, Predictions]:
    n, n_fields = data["current"].shape
    maj = {"next": np.tile(tables["majority"], (n, 1)), "dt": np.full(n, tables["median"])}
    big_next = np.empty((n, n_fields), dtype=np.int64)
    for f in range(n_fields):
        table, default = tables["bigram"][f], int(tables["majority"][f])
        big_next[:, f] = [table.get(int(v), default) for v in data["current"][:, f]]
    big_dt = np.array(
        [tables["time_given"].get(int(v), tables["median"]) for v in data["current"][:, target]]
    )
    return {"majority": maj, "bigram": {"next": big_next, "dt": big_dt}}


@torch.no_grad()
def model_predictions(
    net: torch.nn.Module, dataset: Any, batch_size: int = 256, device: str | torch.device = "cpu"
) -> Predictions:
    """Greedy next event (position 0 of the decoder, given only <bos>) for every prefix of a split."""
    one = dataset.with_target_len(1)
    was_training = net.training
    net.eval()
    preds, times = [], []
    for start in range(0, len(one), batch_size):
        b = one.__getitems__(list(range(start, min(start + batch_size, len(one)))))
        logits, time = net(b["src"].to(device), b["src_len"].to(device), b["tgt_in"].to(device))
        preds.append(torch.stack([lg[:, 0].argmax(-1) for lg in logits], 1).cpu().numpy())
        times.append(
            torch.expm1(time[:, 0].float().clamp(max=20)).cpu().numpy()
            if time is not None
            else np.full(len(b["src"]), np.nan)
        )
    net.train(was_training)
    return {"next": np.concatenate(preds), "dt": np.concatenate(times)}


def score(pred: Predictions, data: dict[str, np.ndarray], names: list[str], target: int) -> dict[str, float]:
    valid = data["next"][:, 0] != PAD
    hit = pred["next"][valid] == data["next"][valid]
    out = {"next_activity_acc": float(hit[:, target].mean()) if len(hit) else float("nan")}
    for f, name in enumerate(names):
        out[f"acc/{name}"] = float(hit[:, f].mean()) if len(hit) else float("nan")
    real = ~np.isnan(data["dt"]) & ~np.isnan(pred["dt"])
    if real.any():
        out["time_mae_days"] = float(np.abs(pred["dt"][real] - data["dt"][real]).mean())
    return out


def evaluate_all(
    net: torch.nn.Module | None, datamodule: Any, split: str, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Model (when given) and baselines on one split: {'model/next_activity_acc': ..., 'bigram/...': ...}."""
    if not datamodule.datasets:
        datamodule.setup()
    names = datamodule.schema.names
    target = names.index(datamodule.schema.target)
    ds = datamodule._split(split)
    data = prefixes(ds)
    tables = fit_baselines(prefixes(datamodule._split("train")), target)
    results = baseline_predictions(tables, data, target)
    if net is not None:
        results = {"model": model_predictions(net, ds, device=device), **results}
    metrics: dict[str, float] = {
        "prefixes": float(len(data["next"])),
        "ceiling/next_activity_acc": prefix_ceiling(data, target),
    }
    for who, pred in results.items():
        for key, value in score(pred, data, names, target).items():
            metrics[f"{who}/{key}"] = value
    return metrics


def evaluate_module(module: Any, datamodule: Any, split: str, output_dir: Path) -> dict[str, float]:
    device = next(module.parameters()).device
    metrics = evaluate_all(module.net, datamodule, split, device)
    manifest = datamodule.manifest or {}
    unknown = manifest.get("unknown_values", {}).get(split, {})
    for field, count in unknown.items():
        metrics[f"unknown_values/{field}"] = float(count)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_protocol.json").write_text(
        json.dumps({"split": split, "protocol": __doc__.split("\n\n")[1], "metrics": metrics}, indent=2)
    )
    return metrics
