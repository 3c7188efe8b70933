"""The modern recipe options on the shakespeare_char budget, each against nanoGPT's time per step:
`python -m benchmarks.gpt_options [--steps 2000] [--variants name,...]`.

Every variant is `python -m zoo.train experiment=shakespeare_char_plus <its overrides>` for the full budget
(4 layers x 128, block 64, batch 12, 2000 steps), run one at a time; before each, nanoGPT's unmodified
`train.py` (the shakespeare_char recipe, `--ref-steps` steps) runs on the same machine so the time-per-step
ratio compares neighbours in time (the host's load drifts). nanoGPT also runs the full budget once for its
val loss. Time per step and val loss are measured exactly as in `benchmarks.gpt_speed` (every validation
character scored once, non-overlapping 64-token windows). Writes docs/benchmarks/gpt-options.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine
from benchmarks.gpt_speed import (
    OUT,
    SEED,
    SHARED,
    nanogpt_config,
    prepare_nanogpt_data,
    run_nanogpt,
    run_zoo,
    score_nanogpt,
    score_zoo,
    step_ms_nanogpt,
    step_ms_zoo,
)

# Every variant states all five settings: shakespeare_char_plus itself now turns them all on.
OFF = {"model.net.activation": "gelu", "model.net.qk_norm": "false", "model.net.zero_init_proj": "false",
       "model.net.logit_softcap": "0", "model.optim.name": "adamw"}  # fmt: skip
ON = {"model.net.activation": "relu2", "model.net.qk_norm": "true", "model.net.zero_init_proj": "true",
      "model.net.logit_softcap": "15", "model.optim.name": "muon"}  # fmt: skip


def variant(*keys: str) -> list[str]:
    return [f"{k}={ON[k] if k in keys else v}" for k, v in OFF.items()]


# name -> (what it adds, overrides on top of experiment=shakespeare_char_plus)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "plus": ("the recipe before these options (RoPE, lr 3e-3)", variant()),
    "relu2": ("ReLU² MLP", variant("model.net.activation")),
    "qk_norm": ("QK-norm", variant("model.net.qk_norm")),
    "zero_init": ("zero-init output projections", variant("model.net.zero_init_proj")),
    "softcap": ("logit soft-cap 15", variant("model.net.logit_softcap")),
    "muon": ("Muon (lr 0.02) for hidden matrices", variant("model.optim.name")),
    "all": ("all five (the recipe now)", variant(*ON)),
    "no_muon": ("all but Muon", variant(*[k for k in ON if k != "model.optim.name"])),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--ref-steps", type=int, default=300, help="nanoGPT timing run before each variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--set", action="append", default=[], help="extra override for every variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--shakespeare", type=Path, default=SHARED / "data" / "text" / "tinyshakespeare.txt")
    parser.add_argument("--nanogpt", type=Path, default=SHARED / "peers" / "nanogpt")
    parser.add_argument("--out", type=Path, default=OUT / "gpt-options.md")
    parser.add_argument(
        "--no-full", action="store_true", help="skip nanoGPT's full-budget run (its val loss)"
    )
    parser.add_argument(
        "--no-score", action="store_true", help="time per step only (short runs: no val loss)"
    )
    args = parser.parse_args()
    if not args.shakespeare.is_file() or not (args.nanogpt / "train.py").is_file():
        print(f"skipping: needs {args.shakespeare} and {args.nanogpt}/train.py")
        return
    text = args.shakespeare.read_text()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpt-options-") as tmp:
        work = Path(tmp)
        folder = work / "nanogpt"
        prepare_nanogpt_data(text, folder / "data" / "shakespeare_char")
        (folder / "configurator.py").symlink_to(args.nanogpt / "configurator.py")
        (folder / "full_config.py").write_text(nanogpt_config(args.steps))
        (folder / "bench_config.py").write_text(nanogpt_config(args.ref_steps))
        nano = "not run (--no-full)"
        if not args.no_full:
            full = run_nanogpt_with(args, folder, "full_config.py", "full")
            nano_val = score_nanogpt(full["ckpt"], folder / "data" / "shakespeare_char", args.nanogpt)
            nano_full_ms = statistics.median(step_ms_nanogpt(full["stdout"], args.warmup, args.steps))
            nano = f"val loss **{nano_val:.4f}**, {nano_full_ms:.2f} ms/step"
            print(f"nanoGPT {args.steps} steps: {nano}", flush=True)
        for name in args.variants.split(","):
            what, overrides = VARIANTS[name]
            ref = run_nanogpt(args.nanogpt, folder, args.ref_steps, args.threads, f"ref-{name}")
            ref_ms = statistics.median(step_ms_nanogpt(ref["stdout"], args.warmup, args.ref_steps))
            extra = (*overrides, *args.set)
            z = run_zoo(
                args.shakespeare, args.steps, args.threads, work, name, SEED, "shakespeare_char_plus", extra
            )
            ms = statistics.median(step_ms_zoo(z["record"], args.warmup))
            val = "n/a (timing run)" if args.no_score else f"{score_zoo(z['run_dir'] / 'export', text):.4f}"
            line = f"| `{name}` | {what} | `{' '.join(extra)}` | {val} | {ms:.2f} | {ref_ms:.2f} | {ms / ref_ms:.3f}x |"
            print(line, flush=True)
            rows.append(line)
            write(args, rows, nano)  # after every row: a run cut short keeps what it measured


def write(args: argparse.Namespace, rows: list[str], nano: str) -> None:
    cmd = "python -m benchmarks.gpt_options " + shlex.join(sys.argv[1:])
    md = (
        "## GPT recipe options on the shakespeare_char budget, against nanoGPT\n\n"
        f"- command: `{cmd.strip()}`\n- machine: {machine(args.threads)}\n- date: {dt.date.today().isoformat()}\n\n"
        f"Each row: `python -m zoo.train experiment=shakespeare_char_plus data.path=tinyshakespeare.txt <overrides>` "
        f"for {args.steps} steps (4L x 4H x d128, block 64, batch 12, seed {SEED}), then every validation character "
        "scored once (non-overlapping 64-token windows). Right before each, nanoGPT's unmodified `train.py` ran "
        f"the reference recipe for {args.ref_steps} steps on the same machine: its median ms/step is the row's "
        f"reference. nanoGPT's own full {args.steps}-step run: {nano}. "
        "Goal: val loss <= 1.65 at <= 1.05x nanoGPT's time per step.\n\n"
        "| variant | adds | overrides | val loss | zoo ms/step | nanoGPT ms/step | ratio |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    print(json.dumps({"written": [str(args.out)]}), flush=True)


def run_nanogpt_with(args, folder: Path, config: str, tag: str) -> dict:
    """nanoGPT's train.py with another config file than bench_config.py."""
    (folder / "bench_config.py").rename(folder / "ref_config.py")
    (folder / config).rename(folder / "bench_config.py")
    try:
        return run_nanogpt(args.nanogpt, folder, args.steps, args.threads, tag)
    finally:
        (folder / "bench_config.py").rename(folder / config)
        (folder / "ref_config.py").rename(folder / "bench_config.py")


if __name__ == "__main__":
    main()
