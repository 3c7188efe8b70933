"""GPT predictions: continuations of prompts (``python -m zoo.predict``, and its alias ``zoo.generate``).

    python -m zoo.predict ckpt_path=<ckpt | run | export> prompt="To be" max_new_tokens=100 temperature=0.8
    python -m zoo.predict ckpt_path=<export> input=prompts.txt output=out.jsonl backend=onnx temperature=0

``prompt=`` is one prompt, ``input=`` a text file of prompts, one per line. Each prompt gets
``num_samples`` continuations of up to ``max_new_tokens`` tokens (``temperature=0``: greedy; ``top_k``
keeps the k likeliest tokens), cut at the end-of-text token with ``stop_at_eot``. ``backend=torch``
samples with the PyTorch network and its KV cache; ``backend=onnx`` with ``model.onnx`` of an export
folder in onnxruntime, recomputing the window each step. Both draw from one generator seeded with
``seed``, so the same settings give the same text. Continuations go to stdout, or to ``output=``
(``.jsonl``: one JSON object per continuation; any other name: the text as printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import ZooError
from zoo.gpt.model import pick_next


def _positive_int(cfg: Any, key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ZooError(f"{key}={value} must be a positive integer")
    return value


def read_prompts(cfg: Any) -> tuple[list[str], str]:
    """(the prompts of the request, how to name one in an error: ``prompt`` or ``input=<file> line``)."""
    prompt, source = cfg.get("prompt"), cfg.get("input")
    if prompt is not None and source:
        raise ZooError(f"prompt= and input={source} are both set: give one prompt, or a file of prompts")
    if prompt is not None:
        return [str(prompt)], "prompt"
    if not source:
        raise ZooError(
            'prompt= or input= is required: prompt="..." for one prompt, input=prompts.txt for one per line'
        )
    path = Path(str(source)).expanduser()
    if not path.is_file():
        raise ZooError(f"input={path}: no such file (expected a text file of prompts, one per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ZooError(f"input={path}: not a readable UTF-8 text file ({type(err).__name__})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise ZooError(f"input={path}: no prompts in it (expected one prompt per line)")
    return prompts, f"input={path}"


@torch.no_grad()
def generate_window(
    logits_of: Any,
    idx: torch.Tensor,
    block_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample continuations of idx (B, T) from `logits_of(window)` -> (B, T', vocab) over the last
    block_size tokens, recomputed every step (no KV cache: what an exported graph offers)."""
    for _ in range(max_new_tokens):
        nxt = pick_next(logits_of(idx[:, -block_size:])[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, nxt.to(idx.device)], dim=1)
        if stop_token is not None and bool((nxt == stop_token).all()):
            break
    return idx


def onnx_logits(run: Any) -> Any:
    """`zoo.gpt.export.OnnxLogits` of the export folder `run` was loaded from."""
    from zoo.core.onnx import export_onnx_file
    from zoo.gpt.export import ONNX_FILE, OnnxLogits

    return OnnxLogits(export_onnx_file(run, ONNX_FILE))


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ZooError(f"device={name}: expected cpu, cuda or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError(f"device={name}: no CUDA device is available (use device=cpu)")
    return name


def continuations(module: Any, cfg: Any, run: Any = None) -> list[dict[str, Any]]:
    """One record per prompt and sample: prompt index, sample index, prompt, continuation, text (both)."""
    from zoo.gpt.tokenizer import tokenizer_from_json

    max_new = _positive_int(cfg, "max_new_tokens")
    num_samples = _positive_int(cfg, "num_samples")
    temperature = float(cfg.get("temperature", 1.0))
    if temperature < 0:
        raise ZooError(f"temperature={temperature} must be >= 0 (0: greedy)")
    top_k = cfg.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ZooError(f"top_k={top_k}: expected a positive integer, or null for the whole vocabulary")
    backend = str(cfg.get("backend", "torch"))
    if backend not in ("torch", "onnx"):
        raise ZooError(f"backend={backend}: expected torch or onnx")
    prompts, where = read_prompts(cfg)
    if not module.tokenizer_json:
        raise ZooError(f"ckpt_path={getattr(run, 'path', '?')}: no tokenizer stored with the weights")
    tok = tokenizer_from_json(module.tokenizer_json)
    encoded = []
    for n, prompt in enumerate(prompts, 1):
        try:
            encoded.append(tok.encode(prompt))
        except ZooError as err:
            name = f"prompt={prompt!r}" if where == "prompt" else f"{where} line {n}"
            raise ZooError(f"{name}: {err}") from None
    net = getattr(module.net, "_orig_mod", module.net)
    block = net.cfg.block_size
    if backend == "onnx":
        device, logits_of = "cpu", onnx_logits(run)
    else:
        device, logits_of = _device(str(cfg.get("device", "cpu"))), None
        net.to(device)
    net.eval()
    generator = torch.Generator(device=device).manual_seed(int(cfg.get("seed", 1337)))
    stop = tok.eot_id if cfg.get("stop_at_eot", True) else None
    records = []
    for p, (prompt, ids) in enumerate(zip(prompts, encoded)):
        ids = ids or ([tok.eot_id] if tok.eot_id is not None else [0])  # an empty prompt: unconditional
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
        if logits_of is None:
            out = net.generate(idx, max_new, temperature, top_k, stop_token=stop, generator=generator)
        else:
            out = generate_window(logits_of, idx, block, max_new, temperature, top_k, stop, generator)
        for s, row in enumerate(out.tolist()):
            new = row[len(ids) :]
            if stop is not None and stop in new:
                new = new[: new.index(stop)]
            text = tok.decode(new)
            records.append({"prompt_index": p, "sample": s, "prompt": prompt, "continuation": text,
                            "text": prompt + text})  # fmt: skip
    return records


def format_records(records: list[dict[str, Any]]) -> str:
    """The continuations as printed: a ``--- sample i ---`` header (with the prompt's number when there
    are several prompts) above each text."""
    several = len({r["prompt_index"] for r in records}) > 1
    parts = []
    for r in records:
        head = (
            f"--- prompt {r['prompt_index']} sample {r['sample']} ---"
            if several
            else f"--- sample {r['sample']} ---"
        )
        parts.append(f"{head}\n{r['text']}")
    return "\n".join(parts) + "\n"


def predict(module: Any, cfg: Any, output_dir: Path, run: Any) -> list[str]:
    """``python -m zoo.predict`` for a GPT: the continuations' texts (prompt + continuation), printed or
    written to ``output=``."""
    records = continuations(module, cfg, run)
    if not cfg.get("output"):
        print(format_records(records), end="")
        return [r["text"] for r in records]
    output = Path(str(cfg.output)).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() in (".jsonl", ".ndjson"):
        output.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
    else:
        output.write_text(format_records(records), encoding="utf-8")
    n_prompts = len({r["prompt_index"] for r in records})
    backend = str(cfg.get("backend", "torch"))
    print(f"[zoo] {len(records)} continuations of {n_prompts} prompts ({backend}) -> {output}")
    return [r["text"] for r in records]
