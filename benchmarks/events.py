"""`python -m benchmarks.events`: the event predictor's numbers, written to docs/benchmarks/events.md.

Parts (``--parts``, comma-separated; each keeps the others' last results in docs/benchmarks/events.json):

throughput  events/s training the CPU baseline recipe on the synthetic log, through the zoo (Lightning
            Trainer, the recipe's settings, no logger/checkpoints/progress bar) and through a plain PyTorch
            loop of the same network, loss, optimizer, clipping and batches. Reported: time per step of
            each (median of ``--repeats`` alternating rounds) and their ratio; beside them, the zoo with
            the default callbacks and a TensorBoard logger, as a user's run has them.
floor       trains a recipe on the synthetic HR/timesheet log and reports validation loss/mean ÷ the
            generator's entropy floor.
accuracy    trains a recipe on each real log (``--logs``) and reports the next-event protocol on its test
            split beside the majority and bigram baselines (zoo.events.evaluate); ``--backtest K`` adds
            the walk-forward backtest over K periods (zoo.events.backtest), ``--suffix`` keeps the row
            of another recipe.
ceiling     no training: each log's baselines and the activity-prefix ceiling (the best any model that
            reads only the activity sequence can score on the test split).
drift       no training: the activity-prefix lookup fitted on each split and scored on the test split's
            quarters, and the quarterly rate of the transition that changed most.

Every result records the exact command that produced it and the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import save, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "events.json"
REPORT = ROOT / "docs" / "benchmarks" / "events.md"


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {platform.processor() or platform.machine()}, {cores} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def compose(overrides: list[str], out: Path, callbacks: str = "none") -> Any:
    from zoo.core.config import compose_config

    return compose_config(["logger=none", f"callbacks={callbacks}", *overrides], output_dir=out)


# -- throughput ------------------------------------------------------------------------------------
def plain_loop(
    model: Any, loader: Any, steps: int, warmup: int, clip: float, lr: float, device: torch.device
) -> tuple[float, int]:
    """Seconds per step and target events per step of a hand-written loop over the same network."""
    net = model.net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    times, events = [], 0
    it = iter(loader)
    for step in range(warmup + steps):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        start = time.perf_counter()
        tensors = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        loss, _ = model._step(tensors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
            events += batch["n_events"]
    return sum(times) / len(times), events // steps


def zoo_loop(cfg: Any, steps: int, warmup: int) -> tuple[float, int]:
    """Seconds per step through the zoo's own build() and Lightning Trainer (batch fetch excluded, as in
    the plain loop: timed from batch start to batch end)."""
    import lightning.pytorch as pl

    from zoo.core.run import build

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.events = 0
            self.start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            if trainer.global_step > warmup:
                self.times.append(time.perf_counter() - self.start)
                self.events += batch["n_events"]

    cfg.trainer.max_steps = warmup + steps
    cfg.trainer.limit_val_batches = 0
    cfg.trainer.enable_progress_bar = False
    cfg.trainer.enable_model_summary = False
    datamodule, model, trainer = build(cfg)
    timer = Timer()
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    return sum(timer.times) / len(timer.times), timer.events // len(timer.times)


def bench_throughput(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from zoo.core.run import build

    overrides = ["model=event_predictor", "experiment=event_cpu_baseline", *args.override]
    # "full" adds what a user's run carries on top (default callbacks: checkpointing, divergence guard, LR
    # monitor, throughput; TensorBoard logger): reported beside the like-for-like ratio, not in it.
    full_overrides = [*overrides, "logger=tensorboard", "~callbacks.rich_progress_bar"]
    rounds: dict[str, list[float]] = {"zoo": [], "plain": [], "full": []}
    events_per_step = 0
    for _ in range(args.repeats):
        cfg = compose(overrides, out)
        torch.manual_seed(0)
        dm, model, _ = build(cfg)
        dm.setup()
        initial = copy.deepcopy(model.state_dict())
        device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
        model.to(device)
        sec, events_per_step = plain_loop(
            model,
            dm.train_dataloader(),
            args.steps,
            args.warmup,
            float(cfg.trainer.gradient_clip_val or 0) or 1e9,
            model.optim.lr,
            device,
        )
        rounds["plain"].append(sec)
        model.load_state_dict(initial)
        torch.manual_seed(0)
        sec, _ = zoo_loop(compose(overrides, out), args.steps, args.warmup)
        rounds["zoo"].append(sec)
        torch.manual_seed(0)
        sec, _ = zoo_loop(compose(full_overrides, out, callbacks="default"), args.steps, args.warmup)
        rounds["full"].append(sec)
    zoo, plain = statistics.median(rounds["zoo"]), statistics.median(rounds["plain"])
    batch = cfg.data.batch_size
    return {
        "recipe": "event_cpu_baseline on data=events/synthetic_hr",
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "batch_size": batch,
        "target_events_per_step": events_per_step,
        "zoo_s_per_step": zoo,
        "plain_s_per_step": plain,
        "ratio_zoo_over_plain": zoo / plain,
        "full_s_per_step": statistics.median(rounds["full"]),
        "zoo_events_per_s": events_per_step / zoo,
        "plain_events_per_s": events_per_step / plain,
        "zoo_samples_per_s": batch / zoo,
        "rounds": rounds,
    }


# -- training-based parts --------------------------------------------------------------------------
def train_and_evaluate(
    overrides: list[str], out: Path, split: str, backtest: dict[str, Any] | None = None
) -> dict[str, Any]:
    from hydra.utils import instantiate

    from zoo.events.evaluate import evaluate_all
    from zoo.events.module import EventModule
    from zoo.train import train

    cfg = compose(
        ["model=event_predictor", *overrides, "export=false", "trainer.enable_progress_bar=false"],
        out,
        callbacks="[model_checkpoint]",
    )
    start = time.time()
    _, metrics = train(cfg)
    seconds = time.time() - start
    best = sorted((out / "checkpoints").glob("epoch*.ckpt"))
    model = (
        EventModule.load_from_checkpoint(best[-1], map_location="cpu", weights_only=True) if best else None
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    result = {
        "train_seconds": round(seconds, 1),
        "val": {k: v for k, v in metrics.items() if k.startswith("val/")},
    }
    if model is not None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        result["eval"] = evaluate_all(model.net.to(device), dm, split, device)
        result["checkpoint"] = best[-1].name
        if backtest and backtest["cutoffs"]:
            from zoo.events.backtest import walk_forward

            start = time.time()
            result["backtest"] = walk_forward(model, dm, split, **backtest, device=device)
            result["backtest"]["seconds"] = round(time.time() - start, 1)
    result["manifest"] = (
        {k: v for k, v in dm.manifest.items() if k not in ("settings",)} if dm.manifest else {}
    )
    return result


def bench_floor(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides = ["experiment=event_cpu_baseline", "data=events/synthetic_hr", *args.override]
    res = train_and_evaluate(overrides, out / "floor", "val")
    floor = res["manifest"]["entropy_floor_nats"]
    best = res["val"].get("val/loss/mean")
    res["floor_mean_nats"] = floor["mean"]
    res["ratio_val_over_floor"] = best / floor["mean"] if best else None
    return res


def bench_accuracy(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    results = {}
    for log in args.logs.split(","):
        overrides = [f"data=events/{log}", *args.recipe.split(), *args.override]
        key = log + args.suffix
        backtest = {
            "cutoffs": args.backtest,
            "steps": args.backtest_steps,
            "half_life_days": args.backtest_half_life,
        }
        results[key] = train_and_evaluate(overrides, out / key, "test", backtest)
        results[key]["overrides"] = overrides
        if args.backtest:
            results[key]["backtest_half_life_days"] = args.backtest_half_life
        results[key]["log"] = log
    return results


def bench_ceiling(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Baselines and the activity-prefix ceiling on each log's test split (no training)."""
    from hydra.utils import instantiate

    from zoo.events.evaluate import evaluate_all

    results = {}
    for log in args.logs.split(","):
        cfg = compose([f"data=events/{log}", *args.recipe.split(), *args.override], out / log)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        results[log] = evaluate_all(None, dm, "test")
    return results


def transition_rates(d: dict[str, np.ndarray], target: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and rates of current -> next activity over the prefixes of a split."""
    counts = np.zeros((size, size))
    np.add.at(counts, (d["current"][:, target], d["next"][:, target]), 1)
    return counts, counts / np.maximum(counts.sum(1, keepdims=True), 1)


def bench_drift(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """How far the test split has drifted from the earlier ones (no training): the prefix lookup fitted on
    each split and scored on the test split's four quarters (by prediction time), and the quarterly rate
    of the transition whose frequency changed most between training and test."""
    import pandas as pd
    from hydra.utils import instantiate

    from zoo.events.datamodule import SPLITS
    from zoo.events.evaluate import prefix_lookup, prefixes

    results = {}
    for log in args.logs.split(","):
        cfg = compose([f"data=events/{log}", *args.recipe.split(), *args.override], out / log)
        dm = instantiate(cfg.data)
        dm.prepare_data()
        dm.setup()
        target = dm.schema.names.index(dm.schema.target)
        data = {s: prefixes(dm.datasets[s]) for s in SPLITS}
        event_s = dm.event_seconds()
        test_when = event_s[dm.datasets["test"].t - 1]
        quarters = np.array_split(np.argsort(test_when, kind="stable"), 4)
        truth = data["test"]["next"][:, target]
        res: dict[str, Any] = {
            "test_quarter_starts": [str(pd.Timestamp(test_when[q].min(), unit="s"))[:10] for q in quarters]
        }
        for fit in SPLITS:
            hit = prefix_lookup(data[fit], data["test"], target) == truth
            res[f"lookup_fit_{fit}"] = {
                "all": float(hit.mean()),
                "quarters": [float(hit[q].mean()) for q in quarters],
            }

        # The transition a -> b whose test-split rate moved most from training's, weighted by how often a is current.
        size = len(dm.vocab().tokens[dm.schema.target])
        c_test, r_test = transition_rates(data["test"], target, size)
        _, r_train = transition_rates(data["train"], target, size)
        score = np.abs(r_test - r_train) * c_test.sum(1, keepdims=True)
        a, b = np.unravel_index(int(score.argmax()), score.shape)
        vocab = dm.vocab()
        name = dm.schema.target
        cur = np.concatenate([data[s]["current"][:, target] for s in SPLITS])
        nxt = np.concatenate([data[s]["next"][:, target] for s in SPLITS])
        when = pd.to_datetime(np.concatenate([event_s[dm.datasets[s].t - 1] for s in SPLITS]), unit="s")
        frame = pd.DataFrame({"quarter": when.to_period("Q").astype(str), "hit": nxt == b})[cur == a]
        by_quarter = frame.groupby("quarter")["hit"].agg(["mean", "size"])
        res["transition"] = {
            "from": vocab.decode(name, int(a)), "to": vocab.decode(name, int(b)),
            "share_of_test_prefixes": float((data["test"]["current"][:, target] == a).mean()),
            "by_quarter": {q: [float(r["mean"]), int(r["size"])] for q, r in by_quarter.iterrows()},
        }  # fmt: skip
        results[log] = res
    return results


# -- report ----------------------------------------------------------------------------------------
def render_floor(f: dict[str, Any] | None, title: str) -> list[str]:
    lines: list[str] = []
    if f:
        lines += [f"## Synthetic HR/timesheet, {title}: validation loss vs the entropy floor", "", f"`{f['command']}`  ", f"Machine: {f['machine']}; {f['when']}", "",
                  f"Val/loss/mean after the last epoch ({f.get('epochs', '?')} epochs) {f['val'].get('val/loss/mean', float('nan')):.4f} nats; floor {f['floor_mean_nats']:.4f} nats; "
                  f"**ratio {f['ratio_val_over_floor']:.2f}**; val/loss/sum {f['val'].get('val/loss/sum', float('nan')):.3f} (17 fields); trained {f['train_seconds']} s.", ""]  # fmt: skip
        rows = [[name, f"{f['val'].get(f'val/loss/{name}', float('nan')):.4f}", f"{fl:.4f}",
                 f"{f['val'].get(f'val/acc/{name}', float('nan')):.3f}"]
                for name, fl in f["manifest"]["entropy_floor_nats"]["per_field"].items()]  # fmt: skip
        lines += [*table(["field", "val loss", "floor", "val acc"], rows), ""]
    return lines


def render_backtest(accuracy: dict[str, Any]) -> list[str]:
    """The walk-forward table of every accuracy result that has one (see zoo.events.backtest)."""
    runs = {k: r for k, r in accuracy.items() if isinstance(r, dict) and "backtest" in r}
    if not runs:
        return []
    lines = ["", "### Walk-forward: retrained at each origin on everything known by then (not the protocol above)", "",
             "The test split cut into periods of equal prefix count by prediction time; at the start of each, the trained",
             "network is fine-tuned on every sample whose targets are known by then (training, validation and earlier",
             "test cases), recency-weighted, and scores that period (`zoo.events.backtest`, `python -m zoo.eval",
             "backtest_cutoffs=K`). *static* = the same network without fine-tuning; *bigram* refitted at each origin.", ""]  # fmt: skip
    rows = []
    for key, r in runs.items():
        b = r["backtest"]
        n = int(b["backtest/cutoffs"])
        per = ", ".join(f"{b[f'backtest/period{k}/model/next_activity_acc']:.1%} / {b[f'backtest/period{k}/static/next_activity_acc']:.1%}"
                        for k in range(n) if f"backtest/period{k}/model/next_activity_acc" in b)  # fmt: skip
        hl = r.get("backtest_half_life_days")
        rows.append([key, n, int(b["backtest/steps"]), f"{hl:g} d" if hl else "uniform", f"**{b['backtest/model/next_activity_acc']:.1%}**",
                     f"{b['backtest/static/next_activity_acc']:.1%}", f"{b['backtest/bigram/next_activity_acc']:.1%}", per, str(b.get("seconds", "?"))])  # fmt: skip
    header = ["run", "periods", "steps / origin", "half-life", "walk-forward model", "static model", "refitted bigram",
              "per period: walk-forward / static", "seconds"]  # fmt: skip
    return [*lines, *table(header, rows)]


def render(results: dict[str, Any]) -> list[str]:
    lines = ["# Event predictor benchmarks", "", "Written by `python -m benchmarks.events` (benchmarks/events.py); raw numbers in",
             "`events.json` beside this file. Each section names the command and the machine that produced it.", ""]  # fmt: skip
    t = results.get("throughput")
    if t:
        lines += ["## Training throughput: zoo vs a plain PyTorch loop", "", f"`{t['command']}`  ", f"Machine: {t['machine']}; {t['when']}", "",
                  *table(["loop", "s/step", "target events/s", "samples/s"], [
                      ["zoo (Lightning Trainer, recipe settings)", f"{t['zoo_s_per_step'] * 1e3:.1f} ms", f"{t['zoo_events_per_s']:.0f}", f"{t['zoo_samples_per_s']:.0f}"],
                      ["plain PyTorch loop, same network/loss/optimizer/batches", f"{t['plain_s_per_step'] * 1e3:.1f} ms", f"{t['plain_events_per_s']:.0f}", f"{t['batch_size'] / t['plain_s_per_step']:.0f}"],
                      *([["zoo + default callbacks + TensorBoard logger (not in the ratio)", f"{t['full_s_per_step'] * 1e3:.1f} ms", f"{t['target_events_per_step'] / t['full_s_per_step']:.0f}", f"{t['batch_size'] / t['full_s_per_step']:.0f}"]] if "full_s_per_step" in t else [])]),
                  "", f"Ratio zoo / plain time per step: **{t['ratio_zoo_over_plain']:.3f}** (goal ≤ 1.05); median of {t['repeats']} alternating rounds of {t['steps_timed']} timed steps "
                  f"(batch {t['batch_size']}, {t['target_events_per_step']} target events per step: the non-padding events of the target windows).", ""]  # fmt: skip
    for key, title in (
        ("floor", "weeks split (the default)"),
        ("floor_time_split", "time split (last 20%; before the weeks split)"),
    ):
        lines += render_floor(results.get(key), title)
    a = results.get("accuracy")
    if a:
        lines += ["## Next-activity accuracy on real logs (test split, every prefix ≥ 1 event, end-of-case included)", "",
                  "Protocol and baselines: docs/events.md. Reference bigram numbers and goals from the issue; published",
                  "LSTM reruns on this protocol: Helpdesk 74.8-76.5%, BPI 2012 W 65.0-67.8%.", ""]  # fmt: skip
        rows = []
        refs = {"helpdesk": ("68.6%", "≥ 80%"), "bpi2012_w": ("65.8%", "≥ 72%")}
        for log, r in a.items():
            if not isinstance(r, dict) or "eval" not in r:
                continue
            e = r["eval"]
            ref, goal = refs.get(r.get("log", log), ("-", "-"))
            rows.append([log, int(e["prefixes"]), f"**{e['model/next_activity_acc']:.1%}**", f"{e['bigram/next_activity_acc']:.1%}",
                         f"{e['majority/next_activity_acc']:.1%}", ref, goal,
                         f"{e.get('model/time_mae_days', float('nan')):.2f} / {e.get('bigram/time_mae_days', float('nan')):.2f} / {e.get('majority/time_mae_days', float('nan')):.2f}"])  # fmt: skip
        lines += [*table(["log", "prefixes", "model", "bigram", "majority", "reference bigram", "goal",
                          "time MAE model / bigram / majority (days)"], rows), ""]  # fmt: skip
        for log, r in a.items():
            if isinstance(r, dict) and "eval" in r:
                accs = ", ".join(
                    f"{k[len('model/acc/') :]} {v:.1%}"
                    for k, v in r["eval"].items()
                    if k.startswith("model/acc/")
                )
                epochs = f"{r['epochs']} epochs, " if "epochs" in r else ""
                lines += [f"- **{log}**: `{r['command']}`  ", f"  {r['machine']}, {r['when']}; trained {r['train_seconds']} s ({epochs}best checkpoint by val/loss/mean: {r.get('checkpoint')}).  ",
                          f"  Per-field accuracy: {accs}."]  # fmt: skip
        lines += render_backtest(a)
        lines.append("")
    c = results.get("ceiling")
    if c:
        lines += ["## How high can next-activity accuracy go? (test split, no training)", "", f"`{c['command']}`  ", f"Machine: {c['machine']}; {c['when']}", "",
                  "The ceiling predicts, for every distinct activity prefix (last `src_seq_len` activities), the next activity",
                  "seen most often after it **in the test split itself**: no model reading only the activity sequence can",
                  "score higher there. What a goal asks beyond it must come from the other fields (resource, time).", ""]  # fmt: skip
        rows = [[log, int(e["prefixes"]), f"{e['majority/next_activity_acc']:.1%}", f"{e['bigram/next_activity_acc']:.1%}",
                 f"**{e['ceiling/next_activity_acc']:.1%}**"]
                for log, e in c.items() if isinstance(e, dict) and "ceiling/next_activity_acc" in e]  # fmt: skip
        lines += [
            *table(["log", "prefixes", "majority", "bigram", "activity-prefix ceiling (fit on test)"], rows),
            "",
        ]
    d = results.get("drift")
    if d:
        lines += ["## Drift between the splits (no training)", "", f"`{d['command']}`  ", f"Machine: {d['machine']}; {d['when']}", "",
                  "Next-activity accuracy on the test split of the activity-prefix lookup (most frequent next activity after",
                  "the same activity prefix; else after the same activity; else the most frequent), fitted on each split,",
                  "overall and on the test split's four quarters by prediction time. Fitted on the test split it is the ceiling.", ""]  # fmt: skip
        for log, r in d.items():
            if not isinstance(r, dict) or "transition" not in r:
                continue
            fits = [[fit, f"**{r[f'lookup_fit_{fit}']['all']:.1%}**", *(f"{q:.1%}" for q in r[f"lookup_fit_{fit}"]["quarters"])]
                    for fit in ("train", "val", "test")]  # fmt: skip
            lines += [f"**{log}** (test quarters start {', '.join(r['test_quarter_starts'])})", "",
                      *table(["lookup fitted on", "test", "Q1", "Q2", "Q3", "Q4"], fits)]  # fmt: skip
            t = r["transition"]
            lines += ["", f"The transition whose rate moved most: *{t['from']}* → *{t['to']}* ({t['share_of_test_prefixes']:.0%} of the test prefixes "
                      f"are at *{t['from']}*). Its rate by calendar quarter of the prediction (all splits):", "",
                      *table(["quarter", *t["by_quarter"]], [["rate", *(f"{v[0]:.0%}" for v in t["by_quarter"].values())],
                                                             ["prefixes", *(str(v[1]) for v in t["by_quarter"].values())]]), ""]  # fmt: skip
    return lines


PAGES = {"events": render}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts", default="throughput", help="comma-separated: throughput,floor,accuracy,ceiling,drift"
    )
    parser.add_argument("--steps", type=int, default=150, help="timed steps per round (throughput)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--logs", default="helpdesk,bpi2012_w", help="real logs for the accuracy part (conf/data/events/)"
    )
    parser.add_argument(
        "--recipe", default="experiment=event_log", help="overrides selecting the accuracy recipe"
    )
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument(
        "--suffix", default="", help="accuracy results go under <log><suffix> (keeps another recipe's row)"
    )
    parser.add_argument(
        "--backtest", type=int, default=0, help="accuracy: walk-forward periods of the test split (0: none)"
    )
    parser.add_argument("--backtest-steps", type=int, default=200, help="fine-tuning steps per origin")
    parser.add_argument("--backtest-half-life", type=float, default=90.0, help="recency half-life (days)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "logs" / "bench_events"), help="run folders")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    command = "python -m benchmarks.events " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    out = Path(args.out)
    parts = {
        "throughput": bench_throughput,
        "floor": bench_floor,
        "accuracy": bench_accuracy,
        "ceiling": bench_ceiling,
        "drift": bench_drift,
    }
    stamp = {"command": command, "machine": machine()}
    for part in args.parts.split(","):
        if part not in parts:
            parser.error(f"unknown part {part}: expected {', '.join(parts)}")
        res = parts[part](args, out / part)
        stamp["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if part == "accuracy":  # one entry per log, each with its own command: logs may be run separately
            results.setdefault("accuracy", {}).update({log: {**r, **stamp} for log, r in res.items()})
        else:
            results[part] = {**res, **stamp}
        save(results_path, results, render)  # after every part: a later part's failure keeps this one
        print(
            json.dumps(
                {part: {k: v for k, v in res.items() if k not in ("manifest",)}}, indent=1, default=float
            )
        )
    print(f"[zoo] wrote {results_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
