"""The GPU run, prepared: `bash benchmarks/gpu.sh [--dry-run] [--out FILE] [--parts mfu,stream,...]`.

One command, meant to finish in under 8 minutes on one H100, writing docs/benchmarks/gpu.json and the
page rendered from it, gpu.md:

mfu      GPT-2 124M (12 x 768, context 1024, batch 16) and gpt_300m (24 x 1024, context 2048, batch 8):
         tokens/s and MFU, bf16-mixed, torch.compile, the zoo module under Lightning's Trainer, random
         tokens; MFU = (6N + 12 L d T, N with the output head) x tokens/s / the GPU's dense bf16 datasheet
         peak (`zoo.core.callbacks.GPU_PEAK_FLOPS`) -- once with the plain recipe and once with the new
         options (ReLU², QK-norm, zero-init projections, logit soft-cap, Muon + AdamW).
stream   `python -m zoo.train experiment=gpt_300m` for 300 steps through the streaming data pipeline
         (token shards prepared from a generated corpus of .jsonl.gz files, no network).
events   `python -m zoo.train experiment=event_gpu` for 200 steps.
tft      `python -m zoo.train model=tft trainer=gpu trainer.precision=16-mixed` for 200 steps.
serve    GPT tokens/s at 8 concurrent clients through `zoo.serve`, by `python -m benchmarks.serve` when
         both exist (another part of the project builds them); skipped with a line otherwise.

``--dry-run`` runs every part on the CPU at toy size (float32, no compile, a few steps) and writes to
``--out`` (default: a temporary file), so the script is exercised by the test suite and cannot rot.
Without a CUDA device and without ``--dry-run`` it writes a page saying that nothing was measured.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import header, read_results, save, stamp, table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "gpu.md"
PARTS = ("mfu", "stream", "events", "tft", "serve")
QUIET = [
    "~callbacks.rich_progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
OPTIONS_NET = {"activation": "relu2", "qk_norm": True, "zero_init_proj": True, "logit_softcap": 15.0}
OPTIONS_OPTIM = {"name": "muon"}


# -- mfu ----------------------------------------------------------------------------------------------
def step_time(net: dict, optim: dict, vocab: int, block: int, batch: int, steps: int, skip: int, dry: bool):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from benchmarks.gpt import RandomTokens, StepTimer
    from zoo.gpt.module import GPTModule

    torch.manual_seed(0)
    base = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "betas": [0.9, 0.95], "weight_decay": 0.1}
    module = GPTModule(net=net, optim={**base, **optim}, vocab_size=vocab, block_size=block, compile=not dry)
    loader = DataLoader(RandomTokens(vocab, block, batch * (steps + skip)), batch_size=batch, shuffle=False)
    timer = StepTimer(skip)
    trainer = pl.Trainer(
        accelerator="cpu" if dry else "gpu", devices=1, precision="32-true" if dry else "bf16-mixed",
        max_steps=steps + skip, logger=False, callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    sec = timer.seconds_per_step("cpu" if dry else "cuda")
    return sec, module.flops_per_token, getattr(module.net, "_orig_mod", module.net).num_params()


def part_mfu(dry: bool, work: Path) -> dict:
    import torch

    from zoo.core.callbacks import GPU_PEAK_FLOPS

    if dry:
        models = {"toy GPT (dry run)": ({"n_layer": 2, "n_head": 2, "n_embd": 64}, 64, 4)}
        vocab, steps, skip, peak, gpu = 512, 3, 1, 0.0, "CPU (dry run)"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        gpu = torch.cuda.get_device_name()
        peak = next((p["bf16"] for k, p in GPU_PEAK_FLOPS.items() if k in gpu), 0.0)
        models = {
            "GPT-2 124M": ({"n_layer": 12, "n_head": 12, "n_embd": 768}, 1024, 16),
            "gpt_300m": ({"n_layer": 24, "n_head": 16, "n_embd": 1024}, 2048, 8),
        }
        vocab, steps, skip = 50257, 20, 8
    rows = []
    for label, (net, block, batch) in models.items():
        for variant, extra_net, optim in (("plain", {}, {}), ("new options", OPTIONS_NET, OPTIONS_OPTIM)):
            full = {**net, "dropout": 0.0, "pad_vocab_to": 64, **extra_net}
            sec, fpt, n = step_time(full, optim, vocab, block, batch, steps, skip, dry)
            tokens = batch * block / sec
            rows.append({"model": label, "variant": variant, "params": n, "context": block, "batch": batch,
                         "ms_per_step": sec * 1000, "tokens_per_s": tokens, "mfu": fpt * tokens / peak if peak else None})  # fmt: skip
            print(rows[-1], flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return {"gpu": gpu, "dry": dry, "vocab": vocab, "steps": steps, "skip": skip, "peak_flops": peak,
            "options": {**OPTIONS_NET, **OPTIONS_OPTIM}, "rows": rows}  # fmt: skip


def render_mfu(r: dict) -> list[str]:
    options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
    rows = [[x["model"], x["variant"], f"{x['params'] / 1e6:.1f}M", x["context"], x["batch"], f"{x['ms_per_step']:.1f}",
             f"{x['tokens_per_s']:,.0f}", "n/a" if x["mfu"] is None else f"{x['mfu']:.1%}"] for x in r["rows"]]  # fmt: skip
    return [
        f"### Training throughput and MFU ({r['gpu']})", "",
        f"zoo GPTModule + Lightning Trainer, {'32-true, eager' if r['dry'] else 'bf16-mixed, torch.compile'}, clipping 1.0, "
        f"random tokens, vocabulary {r['vocab']} padded to a multiple of 64, {r['steps']} timed steps after {r['skip']}. MFU = "
        f"(6N + 12·L·d·T) x tokens/s / {r['peak_flops'] / 1e12:.0f} TFLOP/s (dense bf16 datasheet peak), N counting the output "
        f"head. New options: {options}.", "",
        *table(["model", "variant", "non-embedding params", "context", "batch", "ms / step", "tokens/s", "MFU"], rows),
    ]  # fmt: skip


# -- training runs through the entry point ----------------------------------------------------------------
def train_run(overrides: list[str], work: Path, name: str, timeout: int) -> tuple[dict, float, list[str]]:
    run_dir = work / name
    cmd = [sys.executable, "-m", "zoo.train", *QUIET, *overrides, f"hydra.run.dir={run_dir}",
           f"paths.cache_dir={work / 'cache'}", "logger=csv"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-1500:], proc.stderr[-2500:], sep="\n", file=sys.stderr)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{last} -- from: python {shlex.join(cmd[1:])}")
    return json.loads((run_dir / "metrics.json").read_text()), wall, cmd[1:]


def run_result(title: str, metrics: dict, wall: float, cmd: list[str], keys: tuple[str, ...]) -> dict:
    m = metrics.get("metrics", {})
    return {"title": title, "command": f"python {shlex.join(cmd)}", "global_step": metrics.get("global_step", "?"),
            "wall_s": wall, "metrics": {k: m[k] for k in keys if k in m}}  # fmt: skip


def render_run(r: dict) -> list[str]:
    shown = ", ".join(f"`{k}` {v:.4g}" for k, v in r["metrics"].items())
    return [f"### {r['title']}", "", f"- command: `{r['command']}`",
            f"- {r['global_step']} steps in {r['wall_s']:.0f} s wall (process start, data preparation and compilation included)",
            f"- {shown}"]  # fmt: skip


def generated_corpus(folder: Path, documents: int, seed: int = 0) -> Path:
    """jsonl.gz files of documents drawn from a fixed random lexicon, Zipf-distributed like real words."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    lexicon = ["".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(30000)]
    weights = [1 / (i + 1) for i in range(len(lexicon))]
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1, documents // 8)
    for f in range(0, documents, per_file):
        with gzip.open(folder / f"part-{f // per_file:03d}.jsonl.gz", "wt") as out:
            for i in range(f, min(documents, f + per_file)):
                words = rng.choices(lexicon, weights, k=rng.randint(200, 1200))
                out.write(json.dumps({"id": f"doc{i}", "text": " ".join(words) + "."}) + "\n")
    return folder


def part_stream(dry: bool, work: Path) -> dict:
    corpus = generated_corpus(work / "corpus", 200 if dry else 12000)
    size = {"n_layer": 2, "n_head": 2, "n_embd": 64} if dry else {}
    overrides = [
        "experiment=gpt_300m", "data.source=file", f"data.path={corpus}", "data.hf_repo=null", "data.hf_files=null",
        "data.column=text", "data.id_column=id", "data.tokenizer=bpe", f"data.vocab_size={1024 if dry else 50257}",
        f"data.shard_tokens={2**16 if dry else 2**22}", "trainer.accumulate_grad_batches=1",
        f"trainer.max_steps={5 if dry else 300}", f"trainer.val_check_interval={5 if dry else 300}",
        f"trainer.limit_val_batches={2 if dry else 20}", "trainer.log_every_n_steps=5",
        "callbacks.model_checkpoint.every_n_train_steps=null", "model.optim.warmup_steps=30",
    ]  # fmt: skip
    if dry:
        overrides += ["trainer=cpu", "trainer.precision=32-true", "model.compile=false", "data.block_size=64",
                      "data.batch_size=4", *(f"model.net.{k}={v}" for k, v in size.items())]  # fmt: skip
    else:
        overrides += ["trainer=gpu", "data.batch_size=8"]
    metrics, wall, cmd = train_run(overrides, work, "stream", 300 if dry else 330)
    return run_result(
        "gpt_300m through the streaming pipeline (generated corpus, byte-level BPE trained on it)",
        metrics, wall, cmd, ("train/loss", "val/loss", "throughput/tokens_per_sec", "throughput/mfu"),
    )  # fmt: skip


def part_events(dry: bool, work: Path) -> dict:
    overrides = ["model=event_predictor", "experiment=event_gpu", "trainer.max_epochs=null",
                 f"trainer.max_steps={3 if dry else 200}", "trainer.limit_val_batches=5"]  # fmt: skip
    if dry:
        overrides += ["trainer=cpu", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.accumulate_grad_batches=1",
                      "data.src_seq_len=20", "data.tgt_seq_len=10", "data.num_workers=0", "data.synthetic.n_weeks=20"]  # fmt: skip
    metrics, wall, cmd = train_run(overrides, work, "events", 300 if dry else 150)
    keys = ("train/loss", "val/loss/mean", "val/next_acc", "throughput/samples_per_sec")
    return run_result("experiment=event_gpu", metrics, wall, cmd, keys)


def part_tft(dry: bool, work: Path) -> dict:
    overrides = ["model=tft", f"trainer.max_steps={3 if dry else 200}", "trainer.limit_val_batches=5",
                 "data.num_workers=0"]  # fmt: skip
    overrides += (
        ["trainer=cpu", "trainer.precision=32-true"] if dry else ["trainer=gpu", "trainer.precision=16-mixed"]
    )
    metrics, wall, cmd = train_run(overrides, work, "tft", 300 if dry else 150)
    return run_result(
        f"model=tft trainer=gpu, {'32-true (dry run)' if dry else '16-mixed'}",
        metrics, wall, cmd, ("train/loss", "val/loss", "throughput/samples_per_sec"),
    )  # fmt: skip


def part_serve(dry: bool, work: Path) -> dict:
    if importlib.util.find_spec("zoo.serve") is None or not (ROOT / "benchmarks" / "serve.py").is_file():
        return {"skipped": "zoo.serve or benchmarks/serve.py is not in this checkout."}
    # The server runs on the CPU (zoo.serve serves on CPU only): what batching gives on this machine's cores.
    cmd = [sys.executable, "-m", "benchmarks.serve", "--families", "gpt", "--clients", "8", "--out", str(work),
           "--work", str(work / "serve-runs"), "--requests", "8" if dry else "64", "--duration", "60"]  # fmt: skip
    if dry:
        cmd += ["--gpt-tokens", "8"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd[1:])} failed:\n{proc.stderr[-2000:]}")
    return {"serve": read_results(work / "serve.json")}


def render_serve(r: dict) -> list[str]:
    from benchmarks.serve import render

    lines = ["### zoo.serve, GPT at 8 clients", ""]
    return [*lines, f"skipped: {r['skipped']}"] if "skipped" in r else [*lines, *render(r["serve"])]


RENDER = {
    "mfu": render_mfu,
    "stream": render_run,
    "events": render_run,
    "tft": render_run,
    "serve": render_serve,
}


def render(results: dict) -> list[str]:
    """docs/benchmarks/gpu.md from gpu.json: the stamp, then each part's section (or why it is missing)."""
    lines = header(f"GPU run: {results['title']}", results)
    if not results.get("parts"):
        return [*lines, "Not measured: no CUDA device on the machine that ran this command. Nothing below this line is "
                "a GPU number. Run `bash benchmarks/gpu.sh` on one H100 (under 8 minutes) to fill this page; "
                "`bash benchmarks/gpu.sh --dry-run` checks the script on the CPU (it is in the test suite)."]  # fmt: skip
    for part in (p for p in PARTS if p in results["parts"]):  # the JSON's keys are sorted
        r = results["parts"][part]
        body = [f"### {part}", "", f"FAILED: {r['failed']}"] if "failed" in r else RENDER[part](r)
        lines += [*body, "", f"(part `{part}`: {r['seconds']:.0f} s)", ""]
    return [*lines, f"Total: {results['total_s']:.0f} s."]


PAGES = {"gpu": render}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every part on CPU at toy size")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"page to write (default {DEFAULT_OUT}; dry run: a temp file)"
    )
    parser.add_argument("--parts", default=",".join(PARTS))
    args = parser.parse_args()
    import torch

    out = (args.out or (Path(tempfile.mkdtemp()) / "gpu.md" if args.dry_run else DEFAULT_OUT)).with_suffix(
        ".json"
    )
    title = "DRY RUN on CPU (toy sizes; not GPU numbers)" if args.dry_run else "one GPU"
    if not args.dry_run and not torch.cuda.is_available():
        title = "not measured (no GPU)"
    results = {**stamp(("bash benchmarks/gpu.sh " + shlex.join(sys.argv[1:])).strip()), "title": title}
    if not args.dry_run and not torch.cuda.is_available():
        save(out, results, render)
        print(f"no CUDA device: wrote {out.with_suffix('.md')} saying so")
        return
    parts, failed = {}, []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-gpu-") as tmp:
        for part in args.parts.split(","):
            if part not in PARTS:
                sys.exit(f"--parts: unknown part {part!r}; expected some of {', '.join(PARTS)}")
            t0 = time.perf_counter()
            try:
                parts[part] = globals()[f"part_{part}"](args.dry_run, Path(tmp))
            except Exception as err:  # one part failing must not lose the others' numbers
                failed.append(part)
                traceback.print_exc()
                parts[part] = {
                    "failed": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                }
            parts[part]["seconds"] = time.perf_counter() - t0
            print(json.dumps({part: parts[part]}, default=str), flush=True)
    total = time.perf_counter() - start
    save(out, {**results, "parts": parts, "total_s": total}, render)
    print(json.dumps({"written": str(out.with_suffix(".md")), "seconds": round(total), "failed": failed}))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
