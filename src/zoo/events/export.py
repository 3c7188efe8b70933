"""Self-contained export of an event predictor: ``model.safetensors`` + ``config.json`` + ``vocab.json`` +
``schema.json``. Loading needs torch, safetensors and zoo.events.model, not Lightning::

    from zoo.events.export import load
    net, vocab, schema = load("logs/train/runs/<run>/export")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.errors import ZooError
from zoo.events.model import EventPredictor, NetConfig
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


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[EventPredictor, Vocab, Schema]:
    folder = Path(path)
    for name in ("model.safetensors", "config.json", "vocab.json", "schema.json"):
        if not (folder / name).is_file():
            raise ZooError(f"{folder}: not a zoo event-predictor export (missing {name})")
    cfg = json.loads((folder / "config.json").read_text())
    schema = Schema.from_dict(json.loads((folder / "schema.json").read_text()))
    vocab = Vocab.from_json((folder / "vocab.json").read_text())
    vocab.check_matches(dict(zip(schema.names, cfg["field_sizes"])), f"{folder}/vocab.json")
    net = EventPredictor(
        NetConfig(**cfg["net"]),
        cfg["field_sizes"],
        [f.stream for f in schema.fields],
        cfg["src_len"],
        cfg["tgt_len"],
    )
    net.load_state_dict(load_file(str(folder / "model.safetensors"), device="cpu"))
    return net.to(device).eval(), vocab, schema
