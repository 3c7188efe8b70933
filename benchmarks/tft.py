"""`python -m benchmarks.tft`: the TFT family's measurements, every run built from the recipes themselves.

Each part composes its config exactly as ``python -m zoo.train`` does (`zoo.core.config.compose_config`:
``experiment=<recipe>`` plus ``--override key=value``, repeatable) and builds its datamodule and model with
the run builder `zoo.core.run` uses; nothing here repeats a recipe's settings.

    python -m benchmarks.tft --parts speed                          # fused vs stock, tft_alibaba and tft_etth1
    python -m benchmarks.tft --parts speed --threads 2 --key speed_2threads
    python -m benchmarks.tft --parts loader,fleet
    python -m benchmarks.tft --parts quality --recipe tft_etth1 --override trainer.max_steps=3000
    python -m benchmarks.tft --parts calibration --checkpoint etth1=logs/train/runs/<run>

Parts (`PARTS`): ``speed`` (training samples/s of four loops on the same weights and batches: the stock
loader + pytorch-forecasting's forward, the fast loader + that forward, the zoo's loader + fused forward +
fused Adam, and the zoo's network on prefetched batches), ``loader`` (the stock and the fast loaders
alone), ``fleet`` (peak memory and time to the first step on a generated fleet, in a fresh process),
``quality`` (train the recipe with `zoo.train`, evaluate it with `zoo.eval`: the TFT against the naive and
seasonal-naive baselines) and ``calibration`` (raw and calibrated bands of trained checkpoints).

Results go to docs/benchmarks/tft.json (``--results``), one entry per part and key, each with its command,
machine and date; docs/benchmarks/tft.md is rendered from that JSON (the shared `benchmarks.common`
renderer), its dated "History" section carried over as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import read_results, save, stamp, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "tft.json"
HISTORY = "## History"


# -- building runs from the recipes ---------------------------------------------------------------------
def compose(recipe: str, overrides: list[str], out: Path) -> Any:
    """The config ``python -m zoo.train experiment=<recipe> *overrides`` runs with."""
    from zoo.core.config import compose_config

    base = [f"experiment={recipe}", "logger=none", "callbacks=none", "data.num_workers=0"]
    return compose_config([*base, *overrides], output_dir=out)


def build(cfg: Any, seed: int = 0) -> tuple[Any, Any]:
    """Datamodule (set up) and model of a config, with `zoo.core.run`'s builder (`_instantiate`); the
    weights drawn from `seed`, so every loop of a recipe starts from the same ones."""
    from zoo.core.run import _instantiate

    dm = _instantiate(cfg.data, "data")
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(seed)
    model = _instantiate(cfg.model, "model", _convert_="all", **dm.model_kwargs())
    return dm, model


# -- speed ------------------------------------------------------------------------------------------------
SPEED_LOOPS = {
    # loop -> (overrides, prefetched batches): what each timed loop is built from.
    "stock": (["data.loader=stock", "model.fused=false"], False),
    "fast_loader": (["data.loader=fast", "model.fused=false"], False),
    "zoo": (["data.loader=fast", "model.fused=true"], False),
    "compute_only": (["data.loader=fast", "model.fused=true"], True),
}


def train_step(model: Any, device: str) -> Any:
    """One training step (forward, loss, backward, Adam) as the module trains: its fused Adam when the
    module uses it (`zoo.core.optim.fused_adam`)."""
    from zoo.core.optim import fused_adam

    opt = torch.optim.Adam(
        model.parameters(), lr=model.optim.lr, fused=model.hparams.fused and fused_adam(model)
    )

    def step(batch: Any) -> int:
        x, y = batch
        x = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in x.items()}
        y = ([t.to(device) for t in y[0]] if isinstance(y[0], list) else y[0].to(device), None)
        loss = model._loss(x, y, model.net(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(x["encoder_lengths"])

    return step


def bench_speed(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Per recipe, training samples/s of the `SPEED_LOOPS` on the same weights (seed 0) and the same sampler
    order, so the same batches. The loops take turns, ``--rounds`` rounds of ``--steps / --rounds`` steps
    each, so the host's drift hits them alike; the speedup is the median of the rounds' zoo / stock ratios."""
    device = args.device
    per_round = max(1, -(-args.steps // args.rounds))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    res: dict[str, Any] = {"device": device, "steps": per_round * args.rounds, "rounds": args.rounds,
                           "threads": torch.get_num_threads()}  # fmt: skip
    for recipe in args.recipes.split(","):
        loops: dict[str, tuple[Any, Any]] = {}
        built: dict[str, Any] = {}
        for name, (overrides, prefetched) in SPEED_LOOPS.items():
            cfg = compose(recipe, [*args.override, *overrides], out / recipe / name)
            dm, model = build(cfg)
            model.to(device).train()
            torch.set_num_threads(args.threads)  # the module sets its own on fit start only
            it = None if prefetched else iter(dm.train_dataloader())
            loops[name] = (train_step(model, device), it)
            built[name] = dm
        cached_iter = iter(built["compute_only"].train_dataloader())
        cached = [next(cached_iter) for _ in range(max(per_round, 3))]
        seconds: dict[str, list[float]] = {name: [] for name in loops}
        samples: dict[str, list[int]] = {name: [] for name in loops}
        for run, it in loops.values():  # warm-up
            for i in range(3):
                run(next(it) if it is not None else cached[i])
        for _ in range(args.rounds):
            for name, (run, it) in loops.items():
                sync()
                start, n = time.perf_counter(), 0
                for i in range(per_round):
                    n += run(next(it) if it is not None else cached[i])
                sync()
                seconds[name].append(time.perf_counter() - start)
                samples[name].append(n)
        rate = {name: sum(samples[name]) / sum(seconds[name]) for name in loops}
        ratios = [(samples["zoo"][i] / seconds["zoo"][i]) / (samples["stock"][i] / seconds["stock"][i])
                  for i in range(args.rounds)]  # fmt: skip
        res[recipe] = {**{f"{name}_samples_per_s": rate[name] for name in loops},
                       "speedup": statistics.median(ratios), "round_speedups": ratios,
                       "batch_size": built["zoo"].batch_size, "train_windows": len(built["zoo"].datasets["train"]),
                       "hidden_size": cfg.model.net.hidden_size}  # fmt: skip
    res["load_average"] = round(os.getloadavg()[0], 2)
    return res


# -- loader -----------------------------------------------------------------------------------------------
def rate(loader: Any, batches: int, warmup: int = 2) -> float:
    """Samples/s over `batches` batches (several epochs if needed), after `warmup` batches."""

    def stream() -> Any:
        while True:
            yield from loader

    it = stream()
    for _ in range(warmup):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        n += len(x["encoder_lengths"])
    return n / (time.perf_counter() - start)


def bench_loader(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The recipe's training batches: pytorch-forecasting's own loader (0 and 2 workers) vs the zoo's."""
    recipe = args.recipes.split(",")[0]
    dm, _ = build(compose(recipe, [*args.override, "data.loader=fast"], out))
    ds = dm.datasets["train"]
    res: dict[str, Any] = {"recipe": recipe, "train_windows": len(ds), "batch_size": dm.batch_size}
    for workers in (0, 2):
        loader = ds.to_dataloader(train=True, batch_size=dm.batch_size, num_workers=workers)
        res[f"stock_{workers}workers_samples_per_s"] = rate(loader, args.loader_batches)
    res["zoo_samples_per_s"] = rate(dm.train_dataloader(), args.loader_batches * 10)
    res["speedup"] = res["zoo_samples_per_s"] / res["stock_0workers_samples_per_s"]
    return res


# -- fleet ------------------------------------------------------------------------------------------------
FLEET_CHILD = """
import json, sys, time, warnings
t0 = time.perf_counter()
def peak_rss():
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) * 1024
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from benchmarks.tft import compose, train_step
from zoo.core.run import _instantiate
cfg = compose(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
dm = _instantiate(cfg.data, "data")
dm.prepare_data()
t_prepared, rss_prepared = time.perf_counter() - t0, peak_rss()
dm.setup()
t_setup, rss_setup = time.perf_counter() - t0, peak_rss()
model = _instantiate(cfg.model, "model", _convert_="all", **dm.model_kwargs())
train_step(model, "cpu")(next(iter(dm.train_dataloader())))
print(json.dumps({"rows": int(dm.manifest["rows"]), "train_windows": len(dm.datasets["train"]),
    "prepare_seconds": t_prepared, "setup_seconds": t_setup, "first_step_seconds": time.perf_counter() - t0,
    "peak_rss_after_prepare": rss_prepared, "peak_rss_after_setup": rss_setup, "peak_rss_bytes": peak_rss()}))
"""


def bench_fleet(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``experiment=tft_small`` on a generated fleet (``--fleet-hosts`` x ``--fleet-days`` at 5 min): peak RSS
    and seconds from process start to the first finished training step, in a fresh child process (the
    parent's imports and caches would otherwise count); the imports' own peak is measured apart."""
    overrides = [f"data.synthetic.n_hosts={args.fleet_hosts}", f"data.synthetic.days={args.fleet_days}",
                 "data.synthetic.step_minutes=5", "data.step=5min", "data.max_gap=1h", "data.encoder_length=48",
                 "data.prediction_length=12", "data.batch_size=64", "data.name=fleet",
                 f"paths.cache_dir={tempfile.mkdtemp(prefix='zoo-fleet-')}", *args.override]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    imports = "import torch, zoo.tft.module, zoo.tft.datamodule\nprint(open('/proc/self/status').read())"
    status = subprocess.run(
        [sys.executable, "-c", imports], capture_output=True, text=True, check=True, env=env
    )
    base = (
        int(next(line for line in status.stdout.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    )
    child = [sys.executable, "-c", FLEET_CHILD, "tft_small", json.dumps(overrides), str(out)]
    run = subprocess.run(child, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    res = json.loads(run.stdout.strip().splitlines()[-1])
    per_row = (res["peak_rss_bytes"] - base) / res["rows"]
    rows_per_host = res["rows"] / args.fleet_hosts
    return {**res, "hosts": args.fleet_hosts, "days": args.fleet_days, "import_rss_bytes": base, "bytes_per_row": per_row,
            "hosts_in_24gb": int((24 * 2**30 - base) / per_row / rows_per_host),
            "load_average": round(os.getloadavg()[0], 2)}  # fmt: skip


# -- quality ----------------------------------------------------------------------------------------------
def bench_quality(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train ``experiment=<--recipe>`` with `zoo.train`, then evaluate its best checkpoint with `zoo.eval` on
    the recipe's split (test when the recipe tests, else validation): the TFT and the baselines."""
    from zoo.core.config import compose_config
    from zoo.eval import evaluate
    from zoo.train import train

    cfg = compose_config(
        [f"experiment={args.recipe}", "logger=none", *args.override], output_dir=out / "train"
    )
    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    split = "test" if cfg.get("test") else "val"
    ecfg = compose_config([f"ckpt_path={out / 'train'}", f"split={split}", *args.eval_override],
                          output_dir=out / "eval", config_name="eval")  # fmt: skip
    metrics = evaluate(ecfg)
    return {"recipe": args.recipe, "overrides": list(args.override), "split": split, "train_seconds": seconds,
            "metrics": metrics}  # fmt: skip


# -- calibration ------------------------------------------------------------------------------------------
CALIBRATION_GOALS = {"coverage_p10_p90": 0.80, "coverage_p2_p98": 0.96}


def hindsight(module: Any, scored: dict[str, Any], names: list[str]) -> dict[str, float]:
    """The reference a calibration fitted on validation can at best reach: the same table fitted on the
    scored windows themselves (``*_hindsight`` keys, per target or channel). Its coverage is nominal by
    construction; where its pinball loss is above the raw bands', no shift table of this form meets
    both goals on that target."""
    from zoo.tft.calibrate import fit
    from zoo.tft.evaluate import band_metrics

    res, valid, levels = scored["result"], scored["valid"], module.quantiles
    q = [x[valid] for x in res["quantiles"]]
    actual = [x[valid] for x in res["actual"]]
    channels = scored["channels"]  # channel-independent models: one target, a row per channel
    kept = None if channels is None else [c for c, v in zip(channels, valid.tolist()) if v]
    table_ = fit(q, actual, levels, list(module.target_names), kept, "hindsight")
    out: dict[str, float] = {}
    for t, target in enumerate(module.target_names):
        cal = table_.apply(q[t], target, kept)
        groups = [(target, torch.ones(len(cal), dtype=torch.bool))] if kept is None else [
            (c, torch.tensor([k == c for k in kept])) for c in names]  # fmt: skip
        for label, sel in groups:
            band_metrics(out, label, actual[t][sel], levels, {"_hindsight": cal[sel]})
    return out


def goals(metrics: dict[str, float], targets: list[str], suffix: str = "") -> dict[str, int]:
    """How many of the calibration goals (each coverage within 3 points of nominal, pinball no worse than
    the raw bands') the `suffix` bands (``""``: static, ``_rolling``) meet, over targets."""
    met = checks = 0
    for t in targets:
        if f"{t}/pinball{suffix}" not in metrics:
            continue
        for key, nominal in CALIBRATION_GOALS.items():
            met += abs(metrics.get(f"{t}/{key}{suffix}", -1.0) - nominal) <= 0.03
        met += metrics[f"{t}/pinball{suffix}"] <= metrics[f"{t}/pinball_raw"]
        checks += 3
    return {"met": met, "checks": checks}


def bench_calibration(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Coverage and pinball of each ``--checkpoint name=path``'s raw and calibrated bands on the test split
    (the calibration the checkpoint carries, else one fitted on its validation split, as zoo.eval does)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from zoo.core.family import load_run
    from zoo.tft.calibrate import fit_module
    from zoo.tft.evaluate import score

    runs: dict[str, Any] = {}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        run = load_run(path)
        module = run.module
        dm = instantiate(OmegaConf.merge(run.config.data, {"num_workers": 0}))
        dm.prepare_data()
        dm.setup()
        stored = module.calibration is not None
        if not stored:
            module.calibration = fit_module(module, dm, "val")
        scored = score(module, dm, "test")
        m = scored["metrics"]
        names = list(dm.targets) if getattr(dm, "channel_independent", False) else list(module.target_names)
        m |= hindsight(module, scored, names)
        keys = ("coverage_p10_p90", "coverage_p2_p98", "pinball")
        kept = {f"{t}/{k}{s}": m[f"{t}/tft/{k}{s}"] for t in names for k in keys
                for s in ("", "_raw", "_rolling", "_hindsight") if f"{t}/tft/{k}{s}" in m}  # fmt: skip
        runs[name] = {"checkpoint": str(run.path), "stored_calibration": stored, "targets": names, "metrics": kept,
                      "goals": {"static": goals(kept, names), "rolling": goals(kept, names, "_rolling")}}  # fmt: skip
    return {"runs": runs}


PARTS = {
    "speed": bench_speed,
    "loader": bench_loader,
    "fleet": bench_fleet,
    "quality": bench_quality,
    "calibration": bench_calibration,
}


# -- the page ---------------------------------------------------------------------------------------------
def render_speed(key: str, r: dict[str, Any]) -> list[str]:
    recipes = [k for k, v in r.items() if isinstance(v, dict) and "speedup" in v]
    rows = [[f"`{k}`", r[k]["stock_samples_per_s"], r[k]["fast_loader_samples_per_s"], r[k]["zoo_samples_per_s"],
             r[k]["compute_only_samples_per_s"],
             f"**{r[k]['speedup']:.2f}x** ({min(r[k]['round_speedups']):.2f}–{max(r[k]['round_speedups']):.2f})"]
            for k in recipes]  # fmt: skip
    return [f"### {key}: training samples/s, {r['threads']} torch thread(s), {r['device']}", "",
            *table(["recipe", "stock", "fast loader", "zoo (fused)", "compute only", "zoo / stock (rounds)"], rows),
            "", f"{r['rounds']} rounds of {r['steps'] // r['rounds']} steps per loop, taking turns on the same weights "
            "and batches; the ratio is the median of the rounds' ratios, so other load on the machine hits the loops "
            f"alike on average; the spread of the rounds shows how much it moved them (load average at the end: "
            f"{r.get('load_average', '-')})."]  # fmt: skip


def render_part(part: str, key: str, r: dict[str, Any]) -> list[str]:
    if part == "speed":
        lines = render_speed(key, r)
    elif part == "quality":
        m = r["metrics"]
        names = sorted({k.split("/")[0] for k in m if k.endswith("/tft/mae")})
        rows = [[t, m.get(f"{t}/tft/mse"), m.get(f"{t}/tft/mae"), m.get(f"{t}/snaive/mae"), m.get(f"{t}/naive/mae"),
                 m.get(f"{t}/tft/coverage_p10_p90")] for t in names]  # fmt: skip
        lines = [f"### {key}: `experiment={r['recipe']}` {' '.join(r['overrides'])}, {r['split']} split", "",
                 *table(["target", "TFT MSE", "TFT MAE", "seasonal-naive MAE", "naive MAE", "P10-P90 coverage"], rows)]  # fmt: skip
    elif part == "calibration":
        lines = [f"### {key}: band calibration, raw -> static -> rolling (test split)", ""]
        for name, run in r["runs"].items():
            m = run["metrics"]
            rows = [[t, *(m.get(f"{t}/{k}{s}") for k in ("coverage_p10_p90", "coverage_p2_p98", "pinball")
                          for s in ("_raw", "", "_rolling"))] for t in run["targets"]]  # fmt: skip
            g = run["goals"]
            lines += [f"`{name}` (`{run['checkpoint']}`): goals met, static {g['static']['met']} of "
                      f"{g['static']['checks']}, rolling {g['rolling']['met']} of {g['rolling']['checks']}", "",
                      *table(["target", "P10-P90 raw", "static", "rolling", "P2-P98 raw", "static", "rolling",
                              "pinball raw", "static", "rolling"], rows), ""]  # fmt: skip
    else:
        lines = [f"### {key}", "", *table(["measure", "value"], [[k, v] for k, v in sorted(r.items())
                                                               if isinstance(v, int | float | str)])]  # fmt: skip
    note = [r["note"], ""] if r.get("note") else []
    return [*lines, "", *note, f"`{r['command']}` — {r['machine']}, {r['date']}", ""]


def render(results: dict[str, Any]) -> list[str]:
    lines = ["# TFT benchmarks", "",
             "Rendered by `python -m benchmarks.tft` from docs/benchmarks/tft.json; every run composes its recipe "
             "(`experiment=...` plus the overrides its command names) as `python -m zoo.train` does. Earlier runs, "
             "made with the benchmark's former hand-copied settings, are in the dated History section below.", ""]  # fmt: skip
    for part in PARTS:
        for key, r in sorted(results.get(part, {}).items()):
            lines += render_part(part, key, r)
    return lines


PAGES = {"tft": (render, HISTORY)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tft", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="speed,loader", help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--key", default=None, help="results key (default: the part's name)")
    p.add_argument("--recipes", default="tft_alibaba,tft_etth1", help="speed/loader: experiment configs")
    p.add_argument("--recipe", default="tft_etth1", help="quality: the experiment config trained")
    p.add_argument("--override", action="append", default=[], help="Hydra override of the runs (repeatable)")
    p.add_argument("--eval-override", action="append", default=[], help="quality: zoo.eval override")
    p.add_argument(
        "--checkpoint", action="append", default=[], metavar="NAME=PATH", help="calibration: a run"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--steps", type=int, default=40, help="speed: timed steps per loop")
    p.add_argument("--rounds", type=int, default=5, help="speed: rounds the loops take turns in")
    p.add_argument("--loader-batches", type=int, default=40, help="loader: stock batches timed (zoo: 10x)")
    p.add_argument("--fleet-hosts", type=int, default=500)
    p.add_argument("--fleet-days", type=float, default=30.0)
    p.add_argument("--out", default=str(ROOT / "logs" / "bench" / "tft"), help="run folders")
    p.add_argument("--results", default=str(RESULTS), help="results JSON; the page is its .md beside it")
    args = p.parse_args(argv)
    from zoo.core.logs import quiet_script

    quiet_script()  # the entry points' warning filters (the stock loop's sklearn warning per window, ...)
    parts = args.parts.split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}: expected {', '.join(PARTS)}")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks.tft " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    path = Path(args.results)
    for part in parts:
        res = PARTS[part](args, Path(args.out) / part)
        results = read_results(path)  # re-read: another part may have finished meanwhile
        results.setdefault(part, {})[args.key or part] = {**res, **stamp(command, torch.get_num_threads())}
        save(path, results, render, keep_from=HISTORY)
        print(json.dumps({part: res}, indent=1, default=float)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
