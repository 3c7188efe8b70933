"""Shakespeare-char on CPU, zoo vs nanoGPT side by side: `python -m benchmarks.gpt_speed [--steps N]`.

Runs, in one invocation and interleaved (zoo, nanoGPT, nanoGPT, zoo, ... so that background load and
drift hit both alike), the zoo's own command

    python -m zoo.train experiment=shakespeare_char data.path=tinyshakespeare.txt trainer.max_steps=N

and the reference nanoGPT `train.py` (unmodified, from ../shared/peers/nanogpt, called as a subprocess
with a config file for its own configurator) with the same model, block, batch, LR schedule, betas,
weight decay, clipping, dropout 0, float32, CPU, no compile and the same thread count.

Time per step is measured the same way for both: wall time from the end of one training step to the end
of the next (nanoGPT's own `time T ms` per iteration; for the zoo a tiny callback added to the run
records the same instants), so data loading, logging and callbacks are all charged to the step. The
first `--warmup` steps and every step whose interval holds an evaluation are left out. Each round's
ratio is zoo / nanoGPT of their median ms/step (two runs back to back, so load drift hits both); the
median of the rounds' ratios is the figure, the ratio of the pooled medians is printed beside it.
Both final models are then scored identically: mean cross-entropy over every validation character, in
non-overlapping 64-token windows (the zoo's own `val/loss`); the zoo's round r runs with seed 1337 + r.

Writes docs/benchmarks/gpt-speed.json and the page rendered from it, gpt-speed.md. `--smoke` is a quick check of the machinery (few steps, one round).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pickle
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import save, section, stamp, table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
SHARED = ROOT.parent / "shared"
BLOCK, BATCH = 64, 12  # conf/experiment/shakespeare_char.yaml
SEED = 1337  # conf/train.yaml's seed: round 0 runs the zoo exactly as a user would


class StepTimes(pl.Callback):
    """Records perf_counter at every training batch end (and which intervals held a validation) into
    a JSON file when training ends. Added to the zoo run by the benchmark only."""

    def __init__(self, path: str):
        self.path = path
        self.ends: list[float] = []
        self.polluted: list[int] = []  # indices i whose interval ends[i] - ends[i-1] holds a validation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and self.ends:
            self.polluted.append(len(self.ends))

    def on_train_end(self, trainer, pl_module):
        Path(self.path).write_text(json.dumps({"ends": self.ends, "polluted": self.polluted}))


def step_ms_zoo(record: dict, warmup: int) -> list[float]:
    ends, polluted = record["ends"], set(record["polluted"])
    return [(ends[i] - ends[i - 1]) * 1000 for i in range(max(1, warmup), len(ends)) if i not in polluted]


ITER = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms", re.M)


def step_ms_nanogpt(stdout: str, warmup: int, steps: int) -> list[float]:
    # Iteration `steps` starts with the final evaluation (eval_interval = steps) and is not timed.
    return [float(t) for i, t in ITER.findall(stdout) if warmup <= int(i) < steps]


def val_text(text: str) -> str:
    return text[int(len(text) * 0.9) :]  # nanoGPT's prepare.py split, also the zoo's data.val_fraction=0.1


@torch.no_grad()
def windowed_loss(logits_of, ids: torch.Tensor, block: int = BLOCK, batch: int = 256) -> float:
    """Mean cross-entropy over every target of `ids` (all but the first token), in non-overlapping
    `block`-token windows, the last one short: each validation character is predicted exactly once."""
    starts = list(range(0, len(ids) - 1, block))
    total, count = 0.0, 0
    full = [s for s in starts if s + block + 1 <= len(ids)]
    for i in range(0, len(full), batch):
        x = torch.stack([ids[s : s + block] for s in full[i : i + batch]])
        y = torch.stack([ids[s + 1 : s + block + 1] for s in full[i : i + batch]])
        logits = logits_of(x, y)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    for s in starts[len(full) :]:
        x, y = ids[s : len(ids) - 1][None], ids[s + 1 :][None]
        logits = logits_of(x, y)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


def score_zoo(export_dir: Path, text: str) -> float:
    from zoo.gpt.export import load

    net, tok = load(export_dir)
    ids = torch.tensor(tok.encode(val_text(text)), dtype=torch.long)
    return windowed_loss(lambda x, y: net(x), ids)


def score_nanogpt(ckpt_path: Path, data_dir: Path, nanogpt: Path) -> float:
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter count
        model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    ids = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64))
    # With targets its forward returns logits at every position (without, only the last one).
    return windowed_loss(lambda x, y: model(x, y)[0], ids)


def prepare_nanogpt_data(text: str, out: Path) -> None:
    """train.bin / val.bin / meta.pkl in the layout nanoGPT's data/shakespeare_char/prepare.py writes."""
    out.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    cut = int(len(text) * 0.9)
    for name, part in (("train", text[:cut]), ("val", text[cut:])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(out / f"{name}.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def nanogpt_config(steps: int) -> str:
    """The shakespeare_char recipe (conf/experiment/shakespeare_char.yaml) in nanoGPT's config terms."""
    settings = {
        "out_dir": "out", "dataset": "shakespeare_char", "init_from": "scratch", "wandb_log": False,
        "device": "cpu", "dtype": "float32", "compile": False, "gradient_accumulation_steps": 1,
        "batch_size": BATCH, "block_size": BLOCK, "n_layer": 4, "n_head": 4, "n_embd": 128,
        "dropout": 0.0, "bias": False, "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 100,
        "lr_decay_iters": 2000, "max_iters": steps, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1,
        "grad_clip": 1.0, "decay_lr": True,
        # Evaluate only at iteration 0 and at the end (untimed), saving the final model there.
        "eval_interval": steps, "eval_iters": 20, "always_save_checkpoint": True, "log_interval": 1,
    }  # fmt: skip
    return "".join(f"{k} = {v!r}\n" for k, v in settings.items())


def env_for(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_zoo(
    shakespeare: Path, steps: int, threads: int, work: Path, tag: str, seed: int,
    experiment: str = "shakespeare_char", extra: tuple[str, ...] = (),
) -> dict:  # fmt: skip
    run_dir = work / f"zoo-{tag}"
    times = work / f"zoo-{tag}-steps.json"
    cmd = [
        sys.executable, "-m", "zoo.train", f"experiment={experiment}", f"data.path={shakespeare}",
        f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}", f"seed={seed}",
        f"+callbacks.bench_step_times={{_target_:benchmarks.gpt_speed.StepTimes,path:'{times}'}}", *extra,
    ]  # fmt: skip
    if steps < 250:  # the recipe validates every 250 steps; a shorter run still ends with one
        cmd.append(f"trainer.val_check_interval={steps}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env_for(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"zoo run failed ({shlex.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    return {
        "record": json.loads(times.read_text()),
        "run_dir": run_dir,
        "wall": wall,
        "logged_val": metrics.get("val/loss"),
        "cmd": cmd,
    }


def nanogpt_folder(work: Path, text: str, nanogpt: Path, configs: dict[str, int]) -> Path:
    """The folder nanoGPT's train.py runs in: data/ as its prepare.py writes it, its configurator.py, and a
    config file `<name>.py` of the shakespeare_char recipe for each `configs` name -> steps."""
    folder = work / "nanogpt"
    prepare_nanogpt_data(text, folder / "data" / "shakespeare_char")
    # train.py reads configurator.py and data/ from its working directory.
    (folder / "configurator.py").symlink_to(nanogpt / "configurator.py")
    for name, steps in configs.items():
        (folder / f"{name}.py").write_text(nanogpt_config(steps))
    return folder


def run_nanogpt(
    nanogpt: Path, folder: Path, steps: int, threads: int, tag: str, config: str = "bench_config"
) -> dict:
    out = f"out-{tag}"
    cmd = [sys.executable, str(nanogpt / "train.py"), f"{config}.py", f"--out_dir={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env_for(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"nanoGPT run failed ({shlex.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"stdout": proc.stdout, "ckpt": folder / out / "ckpt.pt", "wall": wall}


def logged_throughput_ms(run_dir: Path) -> float | None:
    """Median time per step from the zoo's own logged tokens/s (TensorBoard), as the issue measured."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    if not events:
        return None
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    if "throughput/tokens_per_sec" not in acc.Tags()["scalars"]:
        return None
    rates = [e.value for e in acc.Scalars("throughput/tokens_per_sec")]
    return statistics.median(BATCH * BLOCK / r * 1000 for r in rates) if rates else None


def add_arguments(parser: argparse.ArgumentParser, threads: int, warmup: int = 10) -> None:
    """The arguments every zoo-vs-nanoGPT benchmark takes (this one and `benchmarks.gpt_options`)."""
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--warmup", type=int, default=warmup, help="first steps of each run left out")
    parser.add_argument("--shakespeare", type=Path, default=SHARED / "data" / "text" / "tinyshakespeare.txt")
    parser.add_argument("--nanogpt", type=Path, default=SHARED / "peers" / "nanogpt")


def missing(args: argparse.Namespace) -> bool:
    """True (and says so) when the data or nanoGPT is not there: the benchmark is skipped."""
    if args.shakespeare.is_file() and (args.nanogpt / "train.py").is_file():
        return False
    print(f"skipping: needs {args.shakespeare} and {args.nanogpt}/train.py")
    return True


def render(r: dict) -> list[str]:
    """docs/benchmarks/gpt-speed.md from gpt-speed.json."""
    zoo_line = f"python -m zoo.train experiment=shakespeare_char data.path=tinyshakespeare.txt trainer.max_steps={r['steps']}"
    how = (
        f"`{zoo_line}` against nanoGPT's unmodified `train.py` (4L x 4H x d128, block {r['block']}, batch {r['batch']}, "
        "lr 1e-3 -> 1e-4 over 2000 steps after 100 warm-up, betas (0.9, 0.99), weight decay 0.1, clip 1.0, "
        f"dropout 0, float32, CPU, no compile), {r['rounds']} interleaved rounds of {r['steps']} steps each. "
        "Time per step: end of one training step to the end of the next, everything included (data, logging, "
        f"callbacks); the first {r['warmup']} steps of each run and steps holding an evaluation left out; median over all rounds. "
        "Val loss: each final model scored the same way, mean cross-entropy over every validation character "
        f"in non-overlapping 64-token windows; the zoo's round r runs with `seed={r['seed']}+r` (its mean is the "
        "table's figure), nanoGPT's `train.py` seeds itself with 1337 every time."
    )  # fmt: skip
    z, n = r["zoo"], r["nanogpt"]
    rows = [
        [who, f"{x['ms_median']:.2f}", f"{x['ms_mean']:.2f}", f"{x['val_loss']:.4f}"]
        for who, x in (("zoo", z), ("nanoGPT", n))
    ]
    summary = (
        f"zoo / nanoGPT time per step, median of the {len(r['round_ratios'])} rounds' ratios: **{r['ratio']:.3f}x** (goal <= 0.95x; "
        f"per round {', '.join(f'{x:.3f}' for x in r['round_ratios'])}; pooled medians {r['pooled_ratio']:.3f}x). Zoo val loss per seed: "
        f"{', '.join(f'{v:.4f}' for v in z['val_losses'])} (nanoGPT {n['val_loss']:.4f}; goal: no worse)."
    )  # fmt: skip
    if z.get("logged_ms") is not None:
        summary += (
            f" The zoo's own logged throughput gives {z['logged_ms']:.2f} ms/step (median over its windows)."
        )
    if z.get("logged_val_loss") is not None:
        summary += f" Its logged `val/loss`: {z['logged_val_loss']:.4f}."
    return section("GPT on CPU: zoo vs nanoGPT, shakespeare_char, same machine, same run", r, how,
                   table(["", "ms / step (median)", "mean", "val loss"], rows), summary,
                   ["Per run:", "", *(f"- {line}" for line in r["runs"])])  # fmt: skip


PAGES = {"gpt-speed": render}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (2000: full recipe)")
    parser.add_argument("--rounds", type=int, default=2, help="zoo/nanoGPT pairs, order alternating")
    parser.add_argument("--smoke", action="store_true", help="quick check: 30 steps, 1 round, no doc")
    add_arguments(parser, threads=min(2, len(os.sched_getaffinity(0))))
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.rounds, args.warmup = 30, 1, 5
    if missing(args):
        return
    if args.steps <= args.warmup:
        sys.exit(f"--steps={args.steps} must be larger than --warmup={args.warmup}")
    text = args.shakespeare.read_text()
    zoo_ms: list[float] = []
    nano_ms: list[float] = []
    rounds: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpt-speed-") as tmp:
        work = Path(tmp)
        folder = nanogpt_folder(work, text, args.nanogpt, {"bench_config": args.steps})
        nano_val = logged = zoo_logged_val = None
        zoo_vals: list[float] = []  # one per round: each round's zoo run has its own seed
        pair_zoo: list[float] = []  # per round: median ms/step of each side (they ran back to back)
        pair_nano: list[float] = []
        zoo_cmd = None
        for r in range(args.rounds):
            order = ("zoo", "nanogpt") if r % 2 == 0 else ("nanogpt", "zoo")
            for who in order:
                if who == "zoo":
                    z = run_zoo(args.shakespeare, args.steps, args.threads, work, str(r), SEED + r)
                    ms = step_ms_zoo(z["record"], args.warmup)
                    zoo_ms += ms
                    pair_zoo.append(statistics.median(ms))
                    zoo_cmd = z["cmd"]
                    zoo_vals.append(score_zoo(z["run_dir"] / "export", text))
                    if r == args.rounds - 1:
                        logged = logged_throughput_ms(z["run_dir"])
                        zoo_logged_val = z["logged_val"]
                else:
                    n = run_nanogpt(args.nanogpt, folder, args.steps, args.threads, str(r))
                    ms = step_ms_nanogpt(n["stdout"], args.warmup, args.steps)
                    nano_ms += ms
                    pair_nano.append(statistics.median(ms))
                    if nano_val is None:  # train.py seeds itself (1337): every round trains the same model
                        nano_val = score_nanogpt(
                            n["ckpt"], folder / "data" / "shakespeare_char", args.nanogpt
                        )
                line = f"round {r} {who:8s} median {statistics.median(ms):6.2f} ms/step over {len(ms)} steps"
                print(line, flush=True)
                rounds.append(line)
    zm, nm = statistics.median(zoo_ms), statistics.median(nano_ms)
    # The host's load drifts over minutes: the ratio within each round (two runs back to back) holds
    # better than the pooled medians, so the median of those ratios is the headline figure.
    ratios = [z / n for z, n in zip(pair_zoo, pair_nano, strict=True)]
    ratio = statistics.median(ratios)
    zoo_val = statistics.fmean(zoo_vals)
    print(
        f"zoo {zm:.2f} ms/step, nanoGPT {nm:.2f} ms/step: {zm / nm:.3f}x pooled, {ratio:.3f}x per-round median; val loss {zoo_val:.4f} (seeds "
        f"{', '.join(f'{v:.4f}' for v in zoo_vals)}) vs {nano_val:.4f} (the zoo's own logged val/loss: {zoo_logged_val})"
    )
    if args.smoke:
        return
    results = {
        **stamp("python -m benchmarks.gpt_speed " + shlex.join(sys.argv[1:]), args.threads),
        "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "block": BLOCK, "batch": BATCH, "seed": SEED,
        "zoo": {"ms_median": zm, "ms_mean": statistics.fmean(zoo_ms), "val_loss": zoo_val, "val_losses": zoo_vals,
                "logged_ms": logged, "logged_val_loss": zoo_logged_val},
        "nanogpt": {"ms_median": nm, "ms_mean": statistics.fmean(nano_ms), "val_loss": nano_val},
        "round_ratios": ratios, "ratio": ratio, "pooled_ratio": zm / nm, "runs": rounds,
    }  # fmt: skip
    save(OUT / "gpt-speed.json", results, render)
    print("\n".join(render(results)))
    print(
        json.dumps(
            {
                "written": ["docs/benchmarks/gpt-speed.md", "docs/benchmarks/gpt-speed.json"],
                "zoo_command": zoo_cmd,
            }
        )
    )


if __name__ == "__main__":
    main()
