"""GPT evaluation (``python -m zoo.eval``): the validation loop's loss and perplexity, and the
tokenizer-independent numbers that make runs with different tokenizers comparable: loss per character
and bits per byte of the held-out text."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch


def char_metrics(
    loss: torch.Tensor, stats: dict[str, int] | None, prefix: str = "val"
) -> dict[str, torch.Tensor]:
    """Loss per character and bits per byte from the mean loss per target token and the split's totals
    (targets, chars, bytes). Exact with full coverage; under limit_val_batches the covered tokens stand
    for the split."""
    if not stats or not stats.get("chars") or not stats.get("bytes"):
        return {}
    return {
        f"{prefix}/loss_per_char": loss * stats["targets"] / stats["chars"],
        f"{prefix}/bpb": loss * stats["targets"] / stats["bytes"] / math.log(2),
    }


def evaluate_module(
    module: Any, datamodule: Any, trainer: Any, cfg: Any, output_dir: Path
) -> dict[str, float]:
    """Metrics of the held-out split and its size. The GPT datamodules hold out one split (their test
    loader is the validation loader), so split=val and split=test evaluate the same text, under val/."""
    from zoo.core.run import metric_values

    results = trainer.validate(module, datamodule=datamodule)
    metrics = metric_values(results[0] if results else {})
    stats = getattr(datamodule, "val_stats", None) or {}
    for key in ("targets", "chars", "bytes"):
        if stats.get(key):
            metrics[f"val/{key}"] = float(stats[key])
    return metrics
