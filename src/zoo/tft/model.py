"""The TFT network: pytorch-forecasting's `TemporalFusionTransformer`, built from stored dataset
parameters (no training data needed), with an attention mask bias that float16 can hold."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting.models.nn.rnn import LSTM
from torch import nn

from zoo.core.errors import ZooError

# float16's largest magnitude is 65504: pytorch-forecasting's -1e9 mask fill overflows it (inf/NaN
# after softmax, or a hard error in masked_fill). -1e4 still gives exp(-1e4) == 0 after softmax.
FP16_MASK_BIAS = -1.0e4
DEFAULT_MASK_BIAS = -1.0e9


@dataclass
class NetConfig:
    """The TFT's network settings (``model.net``), passed to pytorch-forecasting's
    ``TemporalFusionTransformer.from_dataset``; conf/model/tft.yaml states the same defaults (a test keeps
    them equal)."""

    hidden_size: int = 16
    """Width of every hidden layer (variable selection, LSTM, attention, gated residual networks)."""
    lstm_layers: int = 1
    """Layers of the encoder and decoder LSTMs."""
    dropout: float = 0.1
    """Dropout rate throughout the network."""
    attention_head_size: int = 2
    """Attention heads of the interpretable multi-head attention."""
    hidden_continuous_size: int = 8
    """Width of each real input's embedding in the variable selection networks."""
    share_single_variable_networks: bool = False
    """Share the per-variable networks between the encoder's and the decoder's variable selection."""
    causal_attention: bool = True
    """Decoder steps attend only to earlier steps (not to later decoder steps)."""

    def __post_init__(self) -> None:
        for key in ("hidden_size", "lstm_layers", "attention_head_size", "hidden_continuous_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ZooError(f"model.net.{key}={value} must be a positive integer")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ZooError(f"model.net.dropout={self.dropout} must be in [0, 1)")


def mask_bias_for(precision: str, override: float | None = None) -> float:
    if override is not None:
        return float(override)
    return FP16_MASK_BIAS if str(precision).startswith("16") else DEFAULT_MASK_BIAS


def skeleton_dataset(parameters: dict[str, Any]) -> Any:
    """A `TimeSeriesDataSet` with the stored (fitted) parameters over one dummy window: what
    ``TemporalFusionTransformer.from_dataset`` reads (variable lists, encoders, normalizers) without
    the training data. The fitted encoders/normalizers are reused as-is, not refitted."""
    from pytorch_forecasting import TimeSeriesDataSet

    p = dict(parameters)
    length = int(p["max_encoder_length"]) + int(p["max_prediction_length"])
    encoders = p.get("categorical_encoders") or {}

    def known_class(name: str) -> str:
        for enc in (encoders.get(name), encoders.get(f"__group_id__{name}")):
            if enc is not None and getattr(enc, "classes_", None):
                return next(k for k in enc.classes_ if isinstance(k, str) and k != "nan")
        return "0"

    frame: dict[str, Any] = {p["time_idx"]: np.arange(length, dtype=np.int64)}
    for g in p["group_ids"]:
        frame[g] = known_class(g)
    cats = [
        *(p.get("static_categoricals") or []),
        *(p.get("time_varying_known_categoricals") or []),
        *(p.get("time_varying_unknown_categoricals") or []),
    ]
    for c in cats:
        frame[c] = known_class(c)
    targets = p["target"] if isinstance(p["target"], list) else [p["target"]]
    reals = [
        *targets,
        *(p.get("static_reals") or []),
        *(p.get("time_varying_known_reals") or []),
        *(p.get("time_varying_unknown_reals") or []),
    ]
    for r in reals:
        frame.setdefault(r, np.linspace(0.0, 1.0, length))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TimeSeriesDataSet.from_parameters(p, pd.DataFrame(frame), stop_randomization=True)


class Float32LSTM(LSTM):
    """pytorch-forecasting's LSTM, run in float32 under CPU autocast (``trainer.precision=bf16-mixed`` on
    CPU): oneDNN has no bfloat16 LSTM primitive for it and fails ("could not create a primitive
    descriptor for the LSTM forward propagation primitive"). Elsewhere it is the stock module."""

    def forward(self, x: Any, hx: Any = None, lengths: Any = None, enforce_sorted: bool = True) -> Any:
        if not (torch.is_autocast_enabled("cpu") and x.device.type == "cpu"):
            return super().forward(x, hx=hx, lengths=lengths, enforce_sorted=enforce_sorted)
        with torch.autocast("cpu", enabled=False):
            hx = None if hx is None else tuple(h.float() for h in hx)
            return super().forward(x.float(), hx=hx, lengths=lengths, enforce_sorted=enforce_sorted)


def lstm_settings(lstm: nn.LSTM) -> dict[str, Any]:
    """What `nn.LSTM`'s constructor took to build `lstm`."""
    keys = "input_size hidden_size num_layers bias batch_first dropout bidirectional proj_size".split()
    return {k: getattr(lstm, k) for k in keys}


def rebuilt(cls: type[nn.Module], stock: nn.Module, **settings: Any) -> nn.Module:
    """A new ``cls(**settings)`` holding `stock`'s own parameters and buffers: the same tensors (shared with
    every module holding them), so the same state dict. Its constructor runs on the meta device: no memory
    for weights it would drop, and no draw from the random generator (a seeded run trains as before)."""
    with torch.device("meta"):
        new = cls(**settings)
    new.load_state_dict(stock.state_dict(keep_vars=True), assign=True)
    modes = {name: m.training for name, m in stock.named_modules()}
    for name, m in new.named_modules():
        m.training = modes.get(name, stock.training)
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer): `settings` cannot rebuild it
        raise RuntimeError(f"{cls.__name__} from {type(stock).__name__}: {left} not in its state dict")
    return new


def replace_modules(net: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace, top-down, every submodule of `net` for which `replacement` gives a new module, on its parent
    (``setattr``); a module several parents share (the TFT's prescalers, its shared variable networks) by
    one new module."""
    seen: dict[int, tuple[nn.Module, nn.Module]] = {}  # id -> (module, its replacement); the module kept
    # alive, so that its id is not reused

    def visit(parent: nn.Module) -> None:
        # _modules, not named_children(): that yields a child held under two names once
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in seen:
                seen[id(child)] = (child, replacement(child) or child)
                visit(seen[id(child)][1])
            new = seen[id(child)][1]
            if new is not child:
                setattr(parent, name, new)

    visit(net)
    return net


def float32_lstms(net: nn.Module) -> nn.Module:
    """Replace `net`'s LSTMs by `Float32LSTM`s built from them (same parameters and state dict)."""
    return replace_modules(
        net, lambda m: rebuilt(Float32LSTM, m, **lstm_settings(m)) if type(m) is LSTM else None
    )
