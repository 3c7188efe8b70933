"""The modern recipe options on the shakespeare_char budget, each against nanoGPT's time per step:
`python -m benchmarks.gpt_options [--steps 2000] [--variants name,...]`.

Every variant is `python -m zoo.train experiment=shakespeare_char_plus <its overrides>` for the full budget
(4 layers x 128, block 64, batch 12, 2000 steps), run one at a time; before each, nanoGPT's unmodified
`train.py` (the shakespeare_char recipe, `--ref-steps` steps) runs on the same machine so the time-per-step
ratio compares neighbours in time (the host's load drifts). nanoGPT also runs the full budget once for its
val loss. Time per step and val loss are measured exactly as in `benchmarks.gpt_speed` (every validation
character scored once, non-overlapping 64-token windows). Writes docs/benchmarks/gpt-options.json and the
page rendered from it, gpt-options.md (`--out`: another page, its JSON beside it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import save, section, stamp, table
from benchmarks.gpt_speed import (
    OUT,
    SEED,
    add_arguments,
    missing,
    nanogpt_folder,
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
    parser.add_argument(
        "--out", type=Path, default=OUT / "gpt-options.md", help="page; its JSON goes beside it"
    )
    parser.add_argument(
        "--no-full", action="store_true", help="skip nanoGPT's full-budget run (its val loss)"
    )
    parser.add_argument(
        "--no-score", action="store_true", help="time per step only (short runs: no val loss)"
    )
    add_arguments(parser, threads=2)
    args = parser.parse_args()
    if missing(args):
        return
    text = args.shakespeare.read_text()
    results = {**stamp("python -m benchmarks.gpt_options " + shlex.join(sys.argv[1:]), args.threads),
               "steps": args.steps, "ref_steps": args.ref_steps, "seed": SEED, "nanogpt_full": None, "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpt-options-") as tmp:
        work = Path(tmp)
        folder = nanogpt_folder(
            work, text, args.nanogpt, {"full_config": args.steps, "bench_config": args.ref_steps}
        )
        if not args.no_full:
            full = run_nanogpt(args.nanogpt, folder, args.steps, args.threads, "full", config="full_config")
            results["nanogpt_full"] = {
                "val_loss": score_nanogpt(full["ckpt"], folder / "data" / "shakespeare_char", args.nanogpt),
                "ms_per_step": statistics.median(step_ms_nanogpt(full["stdout"], args.warmup, args.steps)),
            }
            print(f"nanoGPT {args.steps} steps: {results['nanogpt_full']}", flush=True)
        for name in args.variants.split(","):
            what, overrides = VARIANTS[name]
            ref = run_nanogpt(args.nanogpt, folder, args.ref_steps, args.threads, f"ref-{name}")
            ref_ms = statistics.median(step_ms_nanogpt(ref["stdout"], args.warmup, args.ref_steps))
            extra = (*overrides, *args.set)
            z = run_zoo(
                args.shakespeare, args.steps, args.threads, work, name, SEED, "shakespeare_char_plus", extra
            )
            ms = statistics.median(step_ms_zoo(z["record"], args.warmup))
            val = None if args.no_score else score_zoo(z["run_dir"] / "export", text)
            row = {"variant": name, "adds": what, "overrides": " ".join(extra), "val_loss": val, "zoo_ms": ms,
                   "nanogpt_ms": ref_ms, "ratio": ms / ref_ms}  # fmt: skip
            print(json.dumps(row), flush=True)
            results["rows"].append(row)
            save(args.out.with_suffix(".json"), results, render)  # after every row: a run cut short keeps it


def render(r: dict) -> list[str]:
    """docs/benchmarks/gpt-options.md (or the --out page) from its JSON."""
    full = r["nanogpt_full"]
    nano = (
        "not run (--no-full)"
        if full is None
        else f"val loss **{full['val_loss']:.4f}**, {full['ms_per_step']:.2f} ms/step"
    )
    how = (
        f"Each row: `python -m zoo.train experiment=shakespeare_char_plus data.path=tinyshakespeare.txt <overrides>` "
        f"for {r['steps']} steps (4L x 4H x d128, block 64, batch 12, seed {r['seed']}), then every validation character "
        "scored once (non-overlapping 64-token windows). Right before each, nanoGPT's unmodified `train.py` ran "
        f"the reference recipe for {r['ref_steps']} steps on the same machine: its median ms/step is the row's "
        f"reference. nanoGPT's own full {r['steps']}-step run: {nano}. "
        "Goal: val loss <= 1.65 at <= 1.05x nanoGPT's time per step."
    )  # fmt: skip
    rows = [[f"`{x['variant']}`", x["adds"], f"`{x['overrides']}`",
             "n/a (timing run)" if x["val_loss"] is None else f"{x['val_loss']:.4f}",
             f"{x['zoo_ms']:.2f}", f"{x['nanogpt_ms']:.2f}", f"{x['ratio']:.3f}x"] for x in r["rows"]]  # fmt: skip
    header = ["variant", "adds", "overrides", "val loss", "zoo ms/step", "nanoGPT ms/step", "ratio"]
    return section(
        "GPT recipe options on the shakespeare_char budget, against nanoGPT", r, how, table(header, rows)
    )


PAGES = {"gpt-options": render, "gpt-options-timing": render}


if __name__ == "__main__":
    main()
