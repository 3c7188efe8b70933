"""Self-contained GPT export: ``model.safetensors`` + ``config.json`` + ``tokenizer.json``.

Loading needs torch, safetensors and this package's model file, not Lightning::

    from zoo.gpt.export import load
    net, tokenizer = load("logs/train/runs/<run>/export")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.core.errors import ZooError
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


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer | None]:
    folder = Path(path)
    for name in ("model.safetensors", "config.json"):
        if not (folder / name).is_file():
            raise ZooError(f"{folder}: not a zoo GPT export (missing {name})")
    net = GPT(GPTConfig(**json.loads((folder / "config.json").read_text())))
    missing, unexpected = net.load_state_dict(
        load_file(str(folder / "model.safetensors"), device="cpu"), strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ZooError(
            f"{folder}/model.safetensors does not match config.json (missing {missing}, unexpected {unexpected})"
        )
    tok_file = folder / "tokenizer.json"
    tokenizer = tokenizer_from_json(tok_file.read_text()) if tok_file.is_file() else None
    return net.to(device).eval(), tokenizer
