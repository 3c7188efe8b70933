"""Self-contained GPT export: ``model.safetensors`` + ``config.json`` + ``tokenizer.json``.

Loading needs torch, safetensors and this package's model file, not Lightning::

    from zoo.gpt.export import load
    net, tokenizer = load("logs/train/runs/<run>/export")

``format=onnx`` adds ``model.onnx`` (`save_onnx`): next-token logits of a window, ``idx`` [batch, T] int64
-> ``logits`` [batch, T, vocab], batch and T (up to block_size) dynamic; `OnnxLogits` runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.errors import ZooError
from zoo.core.onnx import onnx_session, quiet_exporter
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.tokenizer import Tokenizer, tokenizer_from_json


def save(net: GPT, tokenizer_json: str | None, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if net.cfg.tie_weights:  # safetensors refuses shared storage; the tie is restored on load
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(net.config_dict(), indent=2))
    if tokenizer_json:
        (out / "tokenizer.json").write_text(tokenizer_json)
    return out


def read_config(folder: str | Path) -> dict:
    """config.json of an export (the `GPTConfig` fields), after checking the folder holds the weights."""
    folder = Path(folder)
    for name in ("model.safetensors", "config.json"):
        if not (folder / name).is_file():
            raise ZooError(f"{folder}: not a zoo GPT export (missing {name})")
    return json.loads((folder / "config.json").read_text())


def load_weights(net: GPT, folder: str | Path) -> GPT:
    """model.safetensors into `net` (a tied head is restored by the tie itself)."""
    folder = Path(folder)
    missing, unexpected = net.load_state_dict(
        load_file(str(folder / "model.safetensors"), device="cpu"), strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ZooError(
            f"{folder}/model.safetensors does not match config.json (missing {missing}, unexpected {unexpected})"
        )
    return net


def read_tokenizer(folder: str | Path) -> str | None:
    """tokenizer.json of an export, as the JSON string checkpoints store; None where there is none."""
    tok_file = Path(folder) / "tokenizer.json"
    return tok_file.read_text() if tok_file.is_file() else None


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer | None]:
    net = load_weights(GPT(GPTConfig(**read_config(path))), path)
    blob = read_tokenizer(path)
    return net.to(device).eval(), tokenizer_from_json(blob) if blob else None


ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4
"""Largest difference between onnxruntime's and PyTorch's logits `save_onnx` accepts."""


class OnnxLogits:
    """``model.onnx`` in onnxruntime, called like the network without a cache: logits (B, T, vocab)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"idx": idx.cpu().numpy().astype("int64")})
        return torch.from_numpy(logits)


def save_onnx(net: GPT, out_dir: str | Path) -> Path:
    """Write ``model.onnx`` (torch.onnx dynamo exporter: the legacy TorchScript one bakes sizes of the
    traced window into reshapes) and check it with onnxruntime on another batch size and length."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = getattr(net, "_orig_mod", net)
    was_training, device = net.training, next(net.parameters()).device
    net.eval().cpu()
    block = net.cfg.block_size
    # Example sizes of 2+: torch.export fixes dimensions it sees at 0 or 1.
    example = torch.zeros(2, min(2, block), dtype=torch.long)
    length = torch.export.Dim("T", min=1, max=block) if block >= 2 else None
    shapes = {"idx": {0: torch.export.Dim("batch", min=1), **({1: length} if length is not None else {})}}
    tmp = out / (ONNX_FILE + ".tmp")
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(net, (example,), str(tmp), input_names=["idx"], output_names=["logits"],
                              dynamic_shapes=shapes, opset_version=ONNX_OPSET, dynamo=True, verbose=False)  # fmt: skip
        check = torch.randint(0, net.cfg.vocab_size, (3, block), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = net(check)
        diff = float((OnnxLogits(tmp)(check) - expected).abs().max())
        if not diff <= ONNX_TOLERANCE:
            raise ZooError(
                f"{out / ONNX_FILE}: the exported graph's logits differ from PyTorch's by {diff:.3g}"
            )
        os.replace(tmp, out / ONNX_FILE)
    finally:
        tmp.unlink(missing_ok=True)
        net.to(device).train(was_training)
    return out / ONNX_FILE
