"""Self-contained TFT exports: ``model.safetensors`` + ``config.json``.

config.json holds the module's hyperparameters: the dataset parameters with their fitted normalizers
and encoders (plain JSON, see `zoo.tft.params`), and the resampling/feature settings, so

    module = TFTModule.from_export("run/export")
    forecast(module, recent_metrics_frame)        # zoo.tft.predict

predicts for any host without the training data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import ZooError

FORMAT = "zoo.tft/1"


def save(module: Any, out_dir: str | Path) -> Path:
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hparams = {k: v for k, v in dict(module.hparams).items()}
    config = {"format": FORMAT, "hparams": hparams}
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1))
    os.replace(tmp, out / "config.json")
    # save_model (not save_file): the TFT's variable selection networks share their prescalers.
    save_model(module.net, str(out / "model.safetensors"))
    return out


def read_config(export_dir: str | Path) -> dict[str, Any]:
    """The export's config.json (the module's hyperparameters), checked; one-line errors otherwise."""
    folder = Path(export_dir)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ZooError(f"{folder}: not a TFT export (needs config.json and model.safetensors)")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT:
        raise ZooError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT}")
    return config


def load_weights(net: torch.nn.Module, export_dir: str | Path, map_location: str = "cpu") -> None:
    from safetensors.torch import load_model

    load_model(net, str(Path(export_dir) / "model.safetensors"), device=map_location)


def state_dict_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
