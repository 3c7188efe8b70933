"""Self-contained TFT exports: ``model.safetensors`` + ``config.json``.

config.json holds the module's hyperparameters: the dataset parameters with their fitted normalizers
and encoders (plain JSON, see `zoo.tft.params`), and the resampling/feature settings, so

    module = TFTModule.from_export("run/export")
    forecast(module, recent_metrics_frame)        # zoo.tft.predict

predicts for any host without the training data. ``format=onnx`` adds ``model.onnx`` (`save_onnx`): the
network on fixed-length windows as one tensor-in/tensor-out graph, which `OnnxForecaster` runs with
onnxruntime in place of the PyTorch network (``python -m zoo.predict backend=onnx``).
"""

from __future__ import annotations

import contextlib
import json
import os
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.core.errors import ZooError

FORMAT = "zoo.tft/1"
ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("encoder_cat", "encoder_cont", "decoder_cat", "decoder_cont", "target_scale")
ONNX_OUTPUT = "quantiles"
ONNX_OPSET = 17
# What `save_onnx` checks the exported graph against, on windows other than the traced ones.
ONNX_TOLERANCE = 1e-4


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


# -- ONNX ------------------------------------------------------------------------------------------------
class WindowForecaster(nn.Module):
    """The trained TFT network on fixed-length windows, tensors in and out (what ``model.onnx`` holds).

    Inputs (batch dimension dynamic): ``encoder_cat`` [B, E, n_cat] int64, ``encoder_cont`` [B, E, n_cont],
    ``decoder_cat`` [B, P, n_cat] int64, ``decoder_cont`` [B, P, n_cont], ``target_scale`` [B, n_targets, 2]
    (the normalizer's center and scale per window, as the data loader gives them). Output ``quantiles``
    [B, n_targets, P, n_quantiles] in the target's units: the network's own inverse normalization (the
    `GroupNormalizer`/`EncoderNormalizer` rescaling of ``transform_output``) is part of the graph. Every
    window has the full encoder_length and prediction_length, the only lengths the zoo trains with.
    """

    def __init__(self, net: nn.Module, encoder_length: int, prediction_length: int, multi_target: bool):
        super().__init__()
        self.net = net
        self.encoder_length, self.prediction_length = int(encoder_length), int(prediction_length)
        self.multi_target = bool(multi_target)

    def forward(
        self,
        encoder_cat: torch.Tensor,
        encoder_cont: torch.Tensor,
        decoder_cat: torch.Tensor,
        decoder_cont: torch.Tensor,
        target_scale: torch.Tensor,
    ) -> torch.Tensor:
        ones = torch.ones_like(encoder_cont[:, 0, 0], dtype=torch.long)
        scales = [target_scale[:, t] for t in range(target_scale.shape[1])]
        x = {
            "encoder_cat": encoder_cat,
            "encoder_cont": encoder_cont,
            "decoder_cat": decoder_cat,
            "decoder_cont": decoder_cont,
            "encoder_lengths": ones * self.encoder_length,
            "decoder_lengths": ones * self.prediction_length,
            "target_scale": scales if self.multi_target else scales[0],
        }
        prediction = self.net(x)["prediction"]
        return torch.stack(list(prediction), 1) if self.multi_target else prediction.unsqueeze(1)


def _plain_lstm_forward(
    self: nn.LSTM, x: torch.Tensor, hx: Any = None, lengths: Any = None, enforce_sorted: bool = True
) -> Any:
    return nn.LSTM.forward(self, x, hx)


@contextlib.contextmanager
def fixed_length_lstms(net: nn.Module) -> Iterator[None]:
    """pytorch-forecasting's LSTMs pack every batch by its lengths (``pack_padded_sequence`` with
    ``enforce_sorted=False``: a sort, a pack and an unpack that the exporters trace badly or not at all).
    With every window at full length packing changes nothing, so while exporting the LSTMs run unpacked."""
    from pytorch_forecasting.models.nn.rnn import RNN

    lstms = [m for m in net.modules() if isinstance(m, RNN)]
    for m in lstms:
        m.forward = types.MethodType(_plain_lstm_forward, m)
    try:
        yield
    finally:
        for m in lstms:
            del m.forward


def example_windows(module: Any, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random windows of the module's input layout (category 0 exists in every embedding)."""
    hp = module.net.hparams
    gen = torch.Generator().manual_seed(seed)
    E, P, T = module.encoder_length, module.prediction_length, len(module.target_names)
    n_cat, n_cont = len(hp.x_categoricals), len(hp.x_reals)
    scale = torch.stack([torch.randn(batch, T, generator=gen), 0.5 + torch.rand(batch, T, generator=gen)], -1)
    return (
        torch.zeros(batch, E, n_cat, dtype=torch.long),
        torch.randn(batch, E, n_cont, generator=gen),
        torch.zeros(batch, P, n_cat, dtype=torch.long),
        torch.randn(batch, P, n_cont, generator=gen),
        scale,
    )


def onnx_metadata(module: Any) -> dict[str, str]:
    """What a reader checks a model.onnx against before feeding it windows."""
    return {
        "zoo.format": FORMAT,
        "encoder_length": str(module.encoder_length),
        "prediction_length": str(module.prediction_length),
        "targets": json.dumps(list(module.target_names)),
        "quantiles": json.dumps(list(module.quantiles)),
        "inputs": json.dumps(list(ONNX_INPUTS)),
    }


def require_onnx(what: str) -> None:
    """One line instead of an ImportError deep in the exporter: onnx is an optional extra."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ZooError(f"{what} needs {' and '.join(missing)}: pip install -e '.[onnx]'")


def save_onnx(module: Any, out_dir: str | Path) -> Path:
    """Write ``model.onnx`` (a `WindowForecaster` traced by the TorchScript exporter, dynamic batch) and
    check it with onnxruntime against the PyTorch network on other windows and another batch size."""
    require_onnx("format=onnx")
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    net = module.net
    device = next(net.parameters()).device
    net.cpu()
    wrapper = WindowForecaster(
        net, module.encoder_length, module.prediction_length, module.multi_target
    ).eval()
    tmp = out / (ONNX_FILE + ".tmp")
    try:
        with fixed_length_lstms(net), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: lengths are constants of the graph by design
            torch.onnx.export(
                wrapper,
                example_windows(module, 2),
                str(tmp),
                input_names=list(ONNX_INPUTS),
                output_names=[ONNX_OUTPUT],
                dynamic_axes={name: {0: "batch"} for name in [*ONNX_INPUTS, ONNX_OUTPUT]},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        for key, value in onnx_metadata(module).items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
        check = example_windows(module, 5, seed=1)
        with torch.no_grad():
            expected = wrapper(*check).numpy()
        got = OnnxForecaster(tmp, module)(dict(zip(ONNX_INPUTS, check)), stacked=True)
        diff = float(np.abs(got - expected).max())
        if not diff <= ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max())):
            raise ZooError(
                f"{out / ONNX_FILE}: the exported graph differs from the PyTorch network by {diff:.3g}"
            )
        os.replace(tmp, out / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
        net.to(device)
        module.train(was_training)
    return out / ONNX_FILE


class OnnxForecaster:
    """``model.onnx`` in onnxruntime (CPU), called like the network on a batch dict: returns the quantile
    forecasts per target, [B, P, n_quantiles] each, as `TFTModule.quantile_forecast` does."""

    def __init__(self, path: str | Path, module: Any, threads: int | None = None):
        require_onnx("backend=onnx")
        from zoo.core.onnx import onnx_session

        self.path = Path(path)
        if not self.path.is_file():
            raise ZooError(
                f"{self.path}: no such file (backend=onnx needs an export made with python -m zoo.export format=onnx)"
            )
        threads = threads if threads is not None else module.hparams.get("cpu_threads")
        self.session = onnx_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        expected = onnx_metadata(module)
        for key in ("zoo.format", "encoder_length", "prediction_length", "targets", "quantiles"):
            if meta.get(key) != expected[key]:
                raise ZooError(
                    f"{self.path}: {key}={meta.get(key)} but the model's config.json says {expected[key]}: "
                    "re-export it (python -m zoo.export format=onnx)"
                )
        self.encoder_length, self.prediction_length = module.encoder_length, module.prediction_length

    def __call__(self, x: dict[str, Any], stacked: bool = False) -> Any:
        scale = x["target_scale"]
        scale = torch.stack(list(scale), 1) if isinstance(scale, list | tuple) else scale
        scale = scale if scale.ndim == 3 else scale[:, None]
        for key, length in (
            ("encoder_lengths", self.encoder_length),
            ("decoder_lengths", self.prediction_length),
        ):
            if key in x and not bool((x[key] == length).all()):
                raise ZooError(
                    f"{self.path}: the ONNX graph takes full windows only ({key} must all be {length})"
                )
        feeds = {
            "encoder_cat": x["encoder_cat"].long(),
            "encoder_cont": x["encoder_cont"].float(),
            "decoder_cat": x["decoder_cat"].long(),
            "decoder_cont": x["decoder_cont"].float(),
            "target_scale": scale.float(),
        }
        out = self.session.run([ONNX_OUTPUT], {k: v.detach().cpu().numpy() for k, v in feeds.items()})[0]
        if stacked:
            return out
        q = torch.from_numpy(out)
        return [q[:, t] for t in range(q.shape[1])]
