"""`python -m zoo.generate ckpt_path=... prompt="..." max_new_tokens=... temperature=... top_k=...`

Samples text from a GPT checkpoint (`.ckpt` written by zoo.train) or a safetensors export folder, with
the tokenizer stored alongside the weights. Sampling uses the model's KV cache.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from zoo.core.cli import hydra_entry
from zoo.core.errors import ZooError


def load_for_sampling(path: str | Path):
    """(GPT network in eval mode, tokenizer) from a .ckpt or an export folder."""
    from zoo.gpt.tokenizer import tokenizer_from_json

    path = Path(path).expanduser()
    if path.is_dir():
        from zoo.gpt.export import load

        net, tok = load(path)
    else:
        from zoo.eval import load_checkpoint, module_class, saved_config

        checkpoint = load_checkpoint(path)
        target = saved_config(checkpoint, path).model._target_
        if not target.startswith("zoo.gpt."):
            raise ZooError(
                f"ckpt_path={path}: a {target} checkpoint; zoo.generate samples GPT checkpoints only"
            )
        module = module_class(target).load_from_checkpoint(path, map_location="cpu", weights_only=True)
        net = module.net.eval()
        blob = checkpoint.get("zoo_tokenizer")
        tok = tokenizer_from_json(blob) if blob else None
    if tok is None:
        raise ZooError(f"ckpt_path={path}: no tokenizer stored with the weights")
    return net, tok


def generate(cfg: DictConfig) -> list[str]:
    import torch

    if cfg.max_new_tokens <= 0:
        raise ZooError(f"max_new_tokens={cfg.max_new_tokens} must be a positive integer")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    net, tok = load_for_sampling(cfg.ckpt_path)
    net.to(device)
    try:
        encoded = tok.encode(str(cfg.prompt))
    except ZooError as err:
        raise ZooError(f"prompt={str(cfg.prompt)!r}: {err}") from None
    prompt_ids = encoded or ([tok.eot_id] if tok.eot_id is not None else [0])
    idx = torch.tensor([prompt_ids] * int(cfg.num_samples), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    stop = tok.eot_id if cfg.stop_at_eot else None
    out = net.generate(
        idx, int(cfg.max_new_tokens), float(cfg.temperature), cfg.top_k, stop_token=stop, generator=gen
    )
    texts = []
    for row in out.tolist():
        new = row[len(prompt_ids) :]
        if stop is not None and stop in new:
            new = new[: new.index(stop)]
        texts.append(str(cfg.prompt) + tok.decode(new))
    return texts


def _print_samples(cfg: DictConfig) -> None:
    for i, text in enumerate(generate(cfg)):
        print(f"--- sample {i} ---\n{text}")


main = hydra_entry("generate", _print_samples)


if __name__ == "__main__":
    main()
