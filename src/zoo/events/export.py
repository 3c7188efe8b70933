"""Self-contained export of an event predictor: ``model.safetensors`` + ``config.json`` + ``vocab.json`` +
``schema.json``. Loading needs torch, safetensors and zoo.events.model, not Lightning::

    from zoo.events.export import load
    net, vocab, schema = load("logs/train/runs/<run>/export")

``format=onnx`` adds ``model.onnx`` (`save_onnx`): the next-event distributions of every target position,
inputs ``src`` [B, S, F], ``src_len`` [B], ``tgt_in`` [B, T, F] (int64; B and T up to the target window
dynamic), outputs ``p/<field>`` [B, T, V_field] (softmax over real values: never <pad> or <bos>) and,
with the time head, ``log1p_days`` [B, T]; `OnnxEvents` runs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.errors import ZooError
from zoo.core.onnx import onnx_session, quiet_exporter
from zoo.events.model import EventPredictor, NetConfig, distributions
from zoo.events.schema import Schema, Vocab


def save(net: EventPredictor, vocab: Vocab, schema: Schema, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = getattr(net, "_orig_mod", net)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(net.config_dict(), indent=2))
    (out / "vocab.json").write_text(vocab.to_json())
    (out / "schema.json").write_text(json.dumps(schema.to_dict(), indent=1))
    return out


def read_export(path: str | Path) -> tuple[dict, Vocab, Schema]:
    """(config.json, vocabulary, schema) of an export folder, checked against each other."""
    folder = Path(path)
    for name in ("model.safetensors", "config.json", "vocab.json", "schema.json"):
        if not (folder / name).is_file():
            raise ZooError(f"{folder}: not a zoo event-predictor export (missing {name})")
    cfg = json.loads((folder / "config.json").read_text())
    schema = Schema.from_dict(json.loads((folder / "schema.json").read_text()))
    vocab = Vocab.from_json((folder / "vocab.json").read_text())
    vocab.check_matches(dict(zip(schema.names, cfg["field_sizes"])), f"{folder}/vocab.json")
    return cfg, vocab, schema


def load_weights(net: EventPredictor, path: str | Path) -> EventPredictor:
    net.load_state_dict(load_file(str(Path(path) / "model.safetensors"), device="cpu"))
    return net


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[EventPredictor, Vocab, Schema]:
    folder = Path(path)
    cfg, vocab, schema = read_export(folder)
    net = EventPredictor(
        NetConfig(**cfg["net"]),
        cfg["field_sizes"],
        [f.stream for f in schema.fields],
        cfg["src_len"],
        cfg["tgt_len"],
    )
    load_weights(net, folder)
    return net.to(device).eval(), vocab, schema


ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4
"""Largest difference between onnxruntime's and PyTorch's probabilities `save_onnx` accepts."""
TIME_OUTPUT = "log1p_days"


def prob_output(name: str) -> str:
    return f"p/{name}"


class NextEventDistributions(torch.nn.Module):
    """The network as model.onnx holds it: (src, src_len, tgt_in) -> the probabilities of every field's
    value at every target position (`zoo.events.model.distributions`), then log1p(days) if timed."""

    def __init__(self, net: EventPredictor):
        super().__init__()
        self.net = net

    def forward(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        logits, time = self.net(src, src_len, tgt_in)
        return (*distributions(logits), *([time.float()] if time is not None else []))


def example_inputs(net: EventPredictor, batch: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random windows of valid ids (never <pad>), uneven lengths: what the graph is traced and checked on."""
    from zoo.events.schema import SPECIALS

    g = torch.Generator().manual_seed(seed)
    fields = len(net.field_sizes)
    high = torch.tensor(net.field_sizes)

    def ids(length: int) -> torch.Tensor:
        real = (torch.rand(batch, length, fields, generator=g) * (high - len(SPECIALS))).long() + len(
            SPECIALS
        )
        return torch.minimum(real, high - 1)  # a field with no real values: its last special

    src, tgt = ids(net.src_len), ids(steps)
    lengths = torch.randint(1, net.src_len + 1, (batch,), generator=g)
    lengths[0] = net.src_len
    return src, lengths, tgt


def save_onnx(net: EventPredictor, field_names: list[str], out_dir: str | Path) -> Path:
    """Write ``model.onnx`` (torch.onnx dynamo exporter: the legacy TorchScript one bakes the traced batch
    size into the attention reshapes) and check it with onnxruntime on another batch and length."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = getattr(net, "_orig_mod", net)
    was_training, device = net.training, next(net.parameters()).device
    net.eval().cpu()
    wrapper = NextEventDistributions(net).eval()
    names = [prob_output(n) for n in field_names] + ([TIME_OUTPUT] if net.time_head is not None else [])
    batch = torch.export.Dim("batch", min=1)
    steps = {1: torch.export.Dim("T", min=1, max=net.tgt_len)} if net.tgt_len >= 2 else {}
    shapes = {"src": {0: batch}, "src_len": {0: batch}, "tgt_in": {0: batch, **steps}}
    tmp = out / (ONNX_FILE + ".tmp")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # The fused inference kernels of nn.Transformer* have no ONNX form; the exporter needs the plain ops.
        torch.backends.mha.set_fastpath_enabled(False)
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(wrapper, example_inputs(net, 2, min(2, net.tgt_len)), str(tmp),
                              input_names=["src", "src_len", "tgt_in"], output_names=names, dynamic_shapes=shapes,
                              opset_version=ONNX_OPSET, dynamo=True, verbose=False)  # fmt: skip
        check = example_inputs(net, 3, net.tgt_len, seed=1)
        with torch.no_grad():
            expected = wrapper(*check)
        probs, time = OnnxEvents(tmp, field_names)(*check)
        got = [*probs, *([time] if time is not None else [])]
        diff = max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))
        if not diff <= ONNX_TOLERANCE:
            raise ZooError(
                f"{out / ONNX_FILE}: the exported graph's outputs differ from PyTorch's by {diff:.3g}"
            )
        os.replace(tmp, out / ONNX_FILE)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        tmp.unlink(missing_ok=True)
        net.to(device).train(was_training)
    return out / ONNX_FILE


class OnnxEvents:
    """``model.onnx`` in onnxruntime, called like `NextEventDistributions`: (per-field probabilities
    [B, T, V_f], log1p(days) [B, T] or None)."""

    def __init__(self, path: str | Path, field_names: list[str], threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [prob_output(n) for n in field_names if prob_output(n) not in outputs]
        if missing:
            raise ZooError(f"{self.path}: not this model's graph (no outputs {missing[:3]}): export it again")
        self.names = [prob_output(n) for n in field_names]
        self.timed = TIME_OUTPUT in outputs

    def __call__(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        feed = {"src": src.cpu().numpy(), "src_len": src_len.cpu().numpy(), "tgt_in": tgt_in.cpu().numpy()}
        out = self.session.run(self.names + ([TIME_OUTPUT] if self.timed else []), feed)
        probs = [torch.from_numpy(a) for a in out[: len(self.names)]]
        return probs, (torch.from_numpy(out[-1]) if self.timed else None)
