"""GPT benchmarks: `python -m benchmarks.gpt [--only cpu|recipes|gpu] [--steps N]`.

cpu      training throughput of the default small GPT (tokens/s, achieved FLOP/s / measured matmul peak),
         and Lightning (the zoo module + Trainer) vs a plain PyTorch loop over the same model, data,
         optimizer and schedule: time per step.
recipes  shakespeare_char and shakespeare_char_plus trained to the end: final val loss, wall time
         (needs tinyshakespeare: ../shared/data/text or --shakespeare PATH).
gpu      bf16 MFU of a 124M GPT and of gpt_300m on the visible GPU (skipped without CUDA).

Each part writes docs/benchmarks/gpt-<part>.md; `python -m benchmarks.report` joins the parts into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import machine
from zoo.core.callbacks import GPU_PEAK_FLOPS, measured_cpu_peak
from zoo.gpt.module import GPTModule, lr_factor

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"


def header(title: str) -> str:
    cmd = "python -m benchmarks.gpt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"## {title}\n\n- command: `{cmd.strip()}`\n- machine: {machine()}\n- date: {dt.date.today().isoformat()}\n\n"


class RandomTokens(Dataset):
    """Uniform random tokens: for speed measurements only (the cost per step does not depend on data)."""

    def __init__(self, vocab: int, block: int, n: int):
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, vocab, (n, block + 1), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i, :-1], self.data[i, 1:]


class StepTimer(pl.Callback):
    """Times the steps after `skip`, ending at the last step itself: the fit's teardown (which moves the
    model back to the CPU) would otherwise be charged to the steps."""

    def __init__(self, skip: int):
        self.skip, self.start, self.end, self.steps = skip, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.steps += 1
            if trainer.global_step >= trainer.max_steps:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                self.end = time.perf_counter()

    def seconds_per_step(self, device: str) -> float:
        return (self.end - self.start) / self.steps


def make_module(net: dict, vocab: int, block: int, compile: bool = False) -> GPTModule:
    optim = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "betas": [0.9, 0.95], "weight_decay": 0.1}
    return GPTModule(net=net, optim=optim, vocab_size=vocab, block_size=block, compile=compile)


def lightning_step_time(
    net: dict,
    vocab: int,
    block: int,
    batch: int,
    steps: int,
    skip: int,
    precision: str,
    accelerator: str,
    compile: bool = False,
) -> float:
    torch.manual_seed(0)
    module = make_module(net, vocab, block, compile)
    loader = DataLoader(RandomTokens(vocab, block, batch * (steps + skip)), batch_size=batch, shuffle=False)
    timer = StepTimer(skip)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=steps + skip, logger=False,
        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=1.0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds_per_step("cuda" if accelerator == "gpu" else "cpu")


def plain_step_time(net: dict, vocab: int, block: int, batch: int, steps: int, skip: int) -> float:
    """The same model/optimizer/schedule/clipping as the zoo module, in a hand-written loop (CPU, fp32)."""
    torch.manual_seed(0)
    module = make_module(net, vocab, block)
    model = module.net
    cfg = module.optim
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, steps + skip))
    loader = DataLoader(RandomTokens(vocab, block, batch * (steps + skip)), batch_size=batch, shuffle=False)
    model.train()
    start = None
    for i, (x, y) in enumerate(loader):
        if i == skip:
            start = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / steps


SMALL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0}


def bench_cpu(steps: int) -> str:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    vocab, block, batch, skip = 257, 128, 32, 5
    flops_per_token = GPTModule(net=SMALL, optim={}, vocab_size=vocab, block_size=block).flops_per_token
    rows = []
    peak32, peak16 = measured_cpu_peak("fp32", seconds=1.0), measured_cpu_peak("bf16", seconds=1.0)
    # Interleave the two loops and keep each one's best, so background load hits both alike.
    light, plain = [], []
    for _ in range(3):
        plain.append(plain_step_time(SMALL, vocab, block, batch, steps, skip))
        light.append(lightning_step_time(SMALL, vocab, block, batch, steps, skip, "32-true", "cpu"))
    bf16 = lightning_step_time(SMALL, vocab, block, batch, steps, skip, "bf16-mixed", "cpu")
    tokens = batch * block
    for name, sec, peak in (
        ("zoo (Lightning), 32-true", min(light), peak32),
        ("plain PyTorch loop, fp32", min(plain), peak32),
        ("zoo (Lightning), bf16-mixed", bf16, peak16),
    ):
        achieved = flops_per_token * tokens / sec
        rows.append(
            f"| {name} | {sec * 1000:.1f} | {tokens / sec:,.0f} | {achieved / 1e9:.1f} | {achieved / peak:.1%} |"
        )
    text = header("GPT on CPU: throughput and Lightning overhead")
    text += (
        f"Default small GPT (4 layers, d128, 4 heads, 0.80M non-embedding parameters), batch {batch} x {block} tokens, "
        f"AdamW + warmup/cosine + clipping, {steps} timed steps after {skip} warm-up steps; best of 3 interleaved runs. "
        f"Measured CPU matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s (1024x1024 matmul). "
        f"FLOPs per token = 6N + 12·L·d·T (N includes the tied output head) = {flops_per_token / 1e6:.2f} MFLOP.\n\n"
        "| loop | ms / step | tokens/s | achieved GFLOP/s | of measured peak |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nLightning / plain time per step: **{min(light) / min(plain):.3f}x** (goal <= 1.05x).\n"
    )
    if peak16 < peak32:
        text += (
            f"\nbf16 matmuls run slower than fp32 on this CPU ({peak16 / 1e9:.0f} vs {peak32 / 1e9:.0f} GFLOP/s), so "
            "`bf16-mixed` is slower here and its MFU column compares against that slow bf16 peak: prefer `32-true` on this CPU.\n"
        )
    return text


def bench_recipes(shakespeare: Path) -> str:
    from zoo.core.config import compose_config
    from zoo.train import train

    rows = []
    for exp in ("shakespeare_char", "shakespeare_char_plus"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_config(
                [
                    f"experiment={exp}",
                    f"data.path={shakespeare}",
                    "~callbacks.rich_progress_bar",
                    "trainer.enable_progress_bar=false",
                    "logger=csv",
                ],
                output_dir=tmp,
            )
            start = time.time()
            _, metrics = train(cfg)
            wall = time.time() - start
            params = sum(
                p.numel()
                for p in torch.load(Path(tmp) / "checkpoints" / "last.ckpt", weights_only=True)[
                    "state_dict"
                ].values()
            )
        rows.append(
            f"| `python -m zoo.train experiment={exp} data.path=tinyshakespeare.txt` | {metrics['val/loss']:.4f} | {params:,} | {wall:.0f} s |"
        )
    text = header("GPT recipes: tiny Shakespeare, character level")
    text += (
        "2000 steps x 12 sequences x 64 tokens (1.536M training tokens) for both; validation = every token of the last 10% "
        "scored once (non-overlapping 64-token windows). Reference implementation with the first recipe: 1.88 (1.886 on this machine).\n\n"
        "| command | final val loss | parameters (state dict) | wall time |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return text


def bench_gpu(steps: int) -> str:
    if not torch.cuda.is_available():
        return ""
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = next((p["bf16"] for k, p in GPU_PEAK_FLOPS.items() if k in name), 0.0)
    rows = []
    models = {
        "GPT-2 124M": (
            {"n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0, "pad_vocab_to": 64},
            1024,
            16,
        ),
        "gpt_300m": (
            {"n_layer": 24, "n_head": 16, "n_embd": 1024, "dropout": 0.0, "pad_vocab_to": 64},
            2048,
            8,
        ),
    }
    # Eager first (quick), then compiled: a run cut short still has a row per model.
    for compile in (False, True):
        for label, (net, block, batch) in models.items():
            sec = lightning_step_time(
                net, 50257, block, batch, steps, 8 if compile else 5, "bf16-mixed", "gpu", compile=compile
            )
            module = make_module(net, 50257, block)
            tokens = batch * block
            mfu = module.flops_per_token * tokens / sec / peak if peak else float("nan")
            rows.append(
                f"| {label} | {module.net.num_params() / 1e6:.1f}M | {block} | {batch} | {compile} | {sec * 1000:.1f} | {tokens / sec:,.0f} | {mfu:.1%} |"
            )
            print(rows[-1], flush=True)
            del module
            torch.cuda.empty_cache()
    text = header(f"GPT on GPU: bf16 MFU ({name})")
    text += (
        f"zoo GPTModule + Lightning Trainer, bf16-mixed, fused AdamW, clipping 1.0, random tokens, {steps} timed steps. "
        f"MFU = (6N + 12·L·d·T) x tokens/s, N including the tied output head, / {peak / 1e12:.0f} TFLOP/s (dense bf16 datasheet peak).\n\n"
        "| model | non-embedding params | context | batch | torch.compile | ms / step | tokens/s | MFU |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["cpu", "recipes", "gpu"], action="append")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--shakespeare", type=Path, default=ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
    )
    args = parser.parse_args()
    parts = args.only or ["cpu", "recipes", "gpu"]
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    if "cpu" in parts:
        results["cpu"] = bench_cpu(args.steps)
    if "recipes" in parts:
        if args.shakespeare.is_file():
            results["recipes"] = bench_recipes(args.shakespeare)
        else:
            print(f"skipping recipes: {args.shakespeare} not found (--shakespeare PATH)")
    if "gpu" in parts:
        text = bench_gpu(args.steps)
        if text:
            results["gpu"] = text
        else:
            print("skipping gpu: no CUDA device (docs/benchmarks/gpt-gpu.md keeps the last GPU measurement)")
    for part, text in results.items():
        (OUT / f"gpt-{part}.md").write_text(text)
        print(text)
    print(json.dumps({"written": [f"docs/benchmarks/gpt-{p}.md" for p in results]}))


if __name__ == "__main__":
    main()
