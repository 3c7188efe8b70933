"""`python -m benchmarks.tft`: the TFT family's benchmark, written to docs/benchmarks/tft.md.

Parts (``--parts``, comma-separated):
  loader    samples/s of the stock TimeSeriesDataSet dataloader vs the zoo's precomputed loader on the
            Alibaba sample (5 min, cpu/memory/disk, encoder 96, prediction 24, batch 128);
  train     training samples/s (forward+backward+step) with each loader;
  speed     per recipe (tft_alibaba, tft_etth1): end-to-end training samples/s of the stock loop
            (stock loader, pytorch-forecasting's forward) vs the zoo loop (precomputed loader, fused
            forward), same weights and batches, taking turns in rounds; the fast loader with the stock
            forward and the compute-only limit on cached batches beside them (goal: zoo >= 1.6x stock);
  fleet     a generated 500-host x 30-day x 5-min fleet (4.3M rows): peak RSS, bytes per row and
            seconds to the first training step, in a fresh process (goals: <= 2 GB, <= 30 s);
  alibaba   train the tft_alibaba recipe, then MAE/MASE of the TFT vs seasonal-naive on the validation
            windows (goal: MAE ratio <= 0.85 on cpu, memory, disk);
  etth1     train on ETTh1 (7 targets, 12/4/4-month split, z-normalized, history -> 96) and report test
            MSE (goal <= 0.40; published: DLinear 0.375, PatchTST 0.370). ``--etth1-layout channels``
            (default) trains one univariate TFT shared by the 7 channels (data.channel_independent),
            ``joint`` one TFT with 7 targets.
  calibration
            the band calibration (zoo.tft.calibrate) of trained checkpoints, ``--calibration-ckpts
            name=path ...`` (a .ckpt or run folder of ``python -m zoo.train``): P10-P90 and P2-P98 coverage
            and pinball loss per target on the test split, before and after (goal: within 3 points of 80 %
            and 96 %, pinball no worse). Each name is its own row group; running it for one name keeps the
            others.

Every number in the Markdown comes from the run that wrote it; results are also kept as JSON
(``--json``) and several JSON files can be merged into one page (``--merge a.json b.json``), e.g. the
loader part on a CPU machine and the training parts on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zoo.core.logs import quiet_script

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS_TAG = "zoo-tft-bench-results"


def alibaba_dm(shared: Path, cache: Path, loader: str = "fast", **kw: Any) -> Any:
    from zoo.tft.datamodule import MetricsDataModule

    args = dict(source="alibaba", path=str(shared / "metrics/alibaba2018_sample/machine_usage.csv"),
                targets=["cpu_percent", "memory_percent", "disk_percent"], static_categoricals=["host"],
                calendar=["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"], step="5min", max_gap="30min",
                encoder_length=96, prediction_length=24, batch_size=128, num_workers=0, drop_short_series=True,
                cache_dir=str(cache), loader=loader, name="alibaba")  # fmt: skip
    args.update(kw)
    dm = MetricsDataModule(**args)
    dm.prepare_data()
    dm.setup()
    return dm


def etth1_dm(shared: Path, cache: Path, layout: str = "channels", **kw: Any) -> Any:
    from zoo.tft.datamodule import MetricsDataModule

    args = dict(source="ett", path=str(shared / "metrics/ett/ETTh1.csv"), targets=["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"],
                static_categoricals=[], calendar=["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"], step="1h", max_gap="1h",
                encoder_length=336, prediction_length=96, split_rows=[8640, 2880, 2880], standardize=True,
                batch_size=128 if layout == "channels" else 64, channel_independent=layout == "channels",
                target_normalizer="encoder", loader="fast",
                num_workers=0, cache_dir=str(cache), name="etth1")  # fmt: skip
    args.update(kw)
    dm = MetricsDataModule(**args)
    dm.prepare_data()
    dm.setup()
    return dm


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


def bench_loader(
    shared: Path, cache: Path, stock_batches: int = 40, zoo_batches: int = 400
) -> dict[str, Any]:
    dm = alibaba_dm(shared, cache)
    ds = dm.datasets["train"]
    out: dict[str, Any] = {"train_windows": len(ds), "batch_size": dm.batch_size}
    out["stock_samples_per_s"] = rate(
        ds.to_dataloader(train=True, batch_size=dm.batch_size, num_workers=0), stock_batches
    )
    out["stock_2workers_samples_per_s"] = rate(
        ds.to_dataloader(train=True, batch_size=dm.batch_size, num_workers=2), stock_batches
    )
    out["zoo_samples_per_s"] = rate(dm.train_dataloader(), zoo_batches)
    out["speedup"] = out["zoo_samples_per_s"] / out["stock_samples_per_s"]
    return out


def bench_train(shared: Path, cache: Path, device: str, steps: int = 20) -> dict[str, Any]:
    """Training samples/s with either loader (same model, same batches up to shuffling)."""
    from zoo.tft.module import TFTModule

    out: dict[str, Any] = {"device": device}
    for loader in ("fast", "stock"):
        dm = alibaba_dm(shared, cache, loader=loader)
        torch.manual_seed(0)
        model = TFTModule(
            **dm.model_kwargs(),
            net={"hidden_size": 32, "attention_head_size": 4, "hidden_continuous_size": 16},
        ).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        it = iter(dm.train_dataloader())

        def step(model: Any = model, opt: Any = opt, it: Any = it) -> int:
            x, y = next(it)
            x = {
                k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in x.items()
            }
            y = ([t.to(device) for t in y[0]], None)
            loss = model._loss(x, y, model(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return len(x["encoder_lengths"])

        for _ in range(3):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        for _ in range(steps):
            n += step()
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{loader}_train_samples_per_s"] = n / (time.perf_counter() - start)
    return out


SPEED_RECIPES = {
    # experiment=tft_alibaba / tft_etth1: their data settings and networks (conf/experiment/*.yaml).
    "alibaba": {"net": {"hidden_size": 32, "attention_head_size": 4, "hidden_continuous_size": 16, "dropout": 0.1}, "lr": 3e-3,
                "channel_independent": True},
    "etth1": {"net": {"hidden_size": 16, "attention_head_size": 4, "hidden_continuous_size": 8, "dropout": 0.3, "lstm_layers": 2}, "lr": 3e-3,
              "channel_independent": True},
}  # fmt: skip


def recipe_dm(recipe: str, shared: Path, cache: Path, loader: str) -> Any:
    channels = SPEED_RECIPES[recipe]["channel_independent"]
    if recipe == "alibaba":
        return alibaba_dm(shared, cache, loader=loader, eval_stride=6, channel_independent=channels)
    return etth1_dm(shared, cache, "channels" if channels else "joint", encoder_length=96, loader=loader)


def bench_speed(shared: Path, cache: Path, device: str, steps: int = 40, recipes: tuple[str, ...] = ("alibaba", "etth1"),
                compile_net: bool = False, rounds: int = 5) -> dict[str, Any]:  # fmt: skip
    """Per recipe, training samples/s (forward, backward, Adam) of four loops on the same weights and
    the same sampler order, so the same batches:

    - stock: the stock `TimeSeriesDataSet` loader (``__getitem__`` + ``_collate_fn``) feeding
      pytorch-forecasting's own network forward;
    - fast loader: the zoo's precomputed loader feeding that same stock forward;
    - zoo: the precomputed loader feeding the fused forward (`zoo.tft.fused`) and the fused Adam step,
      what ``model=tft`` trains;
    - compute-only: the zoo network on batches fetched beforehand (the limit any loader can reach).

    The loops take turns, `rounds` rounds of ``steps / rounds`` steps each, so that the host's drift
    hits them alike; the ratio is the median of the rounds' zoo / stock ratios."""
    import statistics

    from zoo.core.optim import fused_adam
    from zoo.tft.module import TFTModule

    per_round = max(1, -(-steps // rounds))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict[str, Any] = {"device": device, "steps": per_round * rounds, "rounds": rounds, "compile": compile_net,
                           "threads": torch.get_num_threads(), "fused_adam": True}  # fmt: skip
    for recipe in recipes:
        r = SPEED_RECIPES[recipe]
        dms = {loader: recipe_dm(recipe, shared, cache, loader) for loader in ("stock", "fast")}

        def make(loader: str, fused: bool, r: Any = r, dms: Any = dms) -> Any:
            torch.manual_seed(0)
            model = TFTModule(**dms[loader].model_kwargs(), net=r["net"], optim={"lr": r["lr"]}, plots=False,
                              fused=fused).to(device)  # fmt: skip
            net = torch.compile(model.net) if compile_net and fused else model.net
            # The zoo's step is fused throughout: its network and, where TFTModule takes it, its Adam.
            opt = torch.optim.Adam(model.parameters(), lr=r["lr"], fused=fused and fused_adam(model))

            def step(batch: Any) -> int:
                x, y = batch
                x = {
                    k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device))
                    for k, v in x.items()
                }
                y = ([t.to(device) for t in y[0]] if isinstance(y[0], list) else y[0].to(device), None)
                loss = model._loss(x, y, net(x))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return len(x["encoder_lengths"])

            return step

        cached_iter = iter(dms["fast"].train_dataloader())
        cached = [next(cached_iter) for _ in range(per_round)]
        loops: dict[str, tuple[Any, Any]] = {
            "stock": (make("stock", False), iter(dms["stock"].train_dataloader())),
            "fast_loader": (make("fast", False), iter(dms["fast"].train_dataloader())),
            "zoo": (make("fast", True), iter(dms["fast"].train_dataloader())),
            "compute_only": (make("fast", True), None),
        }
        seconds = {name: [] for name in loops}
        samples = {name: [] for name in loops}
        for run, it in loops.values():  # warm-up (and compilation)
            for i in range(3):
                run(next(it) if it is not None else cached[i % len(cached)])
        for _ in range(rounds):
            for name, (run, it) in loops.items():
                sync()
                start, n = time.perf_counter(), 0
                for i in range(per_round):
                    n += run(next(it) if it is not None else cached[i])
                sync()
                seconds[name].append(time.perf_counter() - start)
                samples[name].append(n)
        rate = {name: sum(samples[name]) / sum(seconds[name]) for name in loops}
        ratios = [
            (samples["zoo"][i] / seconds["zoo"][i]) / (samples["stock"][i] / seconds["stock"][i])
            for i in range(rounds)
        ]
        out[recipe] = {"stock_samples_per_s": rate["stock"], "fast_loader_samples_per_s": rate["fast_loader"],
                       "zoo_samples_per_s": rate["zoo"], "compute_only_samples_per_s": rate["compute_only"],
                       "speedup": statistics.median(ratios), "round_speedups": ratios,
                       "pooled_speedup": rate["zoo"] / rate["stock"],
                       "batch_size": dms["fast"].batch_size, "train_windows": len(dms["fast"].datasets["train"])}  # fmt: skip
    return out


# A child's own peak RSS. Not getrusage's ru_maxrss: Linux carries the parent's high-water mark across
# fork + exec, so a child of a large benchmark process (after the calibration part) reads the parent's.
PEAK_RSS = """
def peak_rss():
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) * 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def bench_fleet(
    hosts: int = 500, days: float = 30.0, step_minutes: int = 5, cache: Path | None = None
) -> dict[str, Any]:
    """`model=tft` data on a generated fleet (hosts x days at step_minutes): peak RSS and seconds from
    process start to the first finished training step, measured in a fresh child process (the
    parent's imports and caches would otherwise count)."""
    import subprocess
    import tempfile

    cache = Path(cache or tempfile.mkdtemp(prefix="zoo-fleet-"))
    code = f"""
import json, resource, time, warnings
t0 = time.perf_counter()
{PEAK_RSS}
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from zoo.tft.datamodule import MetricsDataModule
from zoo.tft.module import TFTModule
dm = MetricsDataModule(source="synthetic", synthetic={{"n_hosts": {hosts}, "days": {days}, "step_minutes": {step_minutes}}},
    step="{step_minutes}min", max_gap="1h", encoder_length=48, prediction_length=12, static_categoricals=["host"],
    calendar=["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"], num_workers=0, batch_size=64,
    cache_dir={str(cache)!r}, name="fleet")
dm.prepare_data()
t_prepared = time.perf_counter() - t0
rss_prepared = peak_rss()
dm.setup()
t_setup = time.perf_counter() - t0
rss_setup = peak_rss()
model = TFTModule(**dm.model_kwargs(), plots=False)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = next(iter(dm.train_dataloader()))
loss = model._loss(x, y, model(x))
loss.backward()
opt.step()
print(json.dumps({{"rows": int(dm.manifest["rows"]), "train_windows": len(dm.datasets["train"]),
    "val_windows": len(dm.datasets["val"]), "prepare_seconds": t_prepared, "setup_seconds": t_setup,
    "first_step_seconds": time.perf_counter() - t0, "peak_rss_after_prepare": rss_prepared, "peak_rss_after_setup": rss_setup,
    "peak_rss_bytes": peak_rss()}}))
"""
    # Imports alone (torch, Lightning, pytorch-forecasting) are a fixed cost, not a per-row one.
    base = subprocess.run([sys.executable, "-c", f"{PEAK_RSS}\nimport torch, zoo.tft.module, zoo.tft.datamodule\nprint(peak_rss())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    load_before = os.getloadavg()[0]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(run.stdout.strip().splitlines()[-1])
    res.update(hosts=hosts, days=days, step_minutes=step_minutes, import_rss_bytes=int(base.stdout.strip()))
    # Seconds on a shared machine are not the 2-core figure; the load average says how busy it was.
    res["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    res["cpu_count"] = os.cpu_count()
    per_row = (res["peak_rss_bytes"] - res["import_rss_bytes"]) / res["rows"]
    res["bytes_per_row"] = per_row
    # The largest fleet of this shape whose peak fits in 24 GB, at the measured bytes per row.
    rows_per_host = res["rows"] / hosts
    res["hosts_in_24gb"] = int((24 * 2**30 - res["import_rss_bytes"]) / per_row / rows_per_host)
    return res


def fit_and_score(dm: Any, split: str, device: str, max_steps: int, epoch_batches: int, net: dict[str, Any], lr: float, out_dir: Path,
                  precision: str = "32-true", seed: int = 1337, ema: float = 0.0, weight_decay: float = 0.0,
                  **module_kw: Any) -> dict[str, Any]:  # fmt: skip
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint

    from zoo.tft.evaluate import evaluate_module, score
    from zoo.tft.module import TFTModule

    pl.seed_everything(seed, workers=True)
    model = TFTModule(
        **dm.model_kwargs(),
        net=net,
        optim={"lr": lr, "weight_decay": weight_decay},
        precision=precision,
        plots=False,
        **module_kw,
    )
    ckpt = ModelCheckpoint(dirpath=str(out_dir / "ckpt"), monitor="val/loss", mode="min", save_top_k=1)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision, max_steps=max_steps,
                         limit_train_batches=epoch_batches, gradient_clip_val=0.1, logger=False, enable_progress_bar=False,
                         callbacks=[ckpt, EarlyStopping(monitor="val/loss", patience=8, check_on_train_epoch_end=False)]
                         + ([EMAWeightAveraging(decay=ema)] if ema > 0 else []), use_distributed_sampler=False,
                         num_sanity_val_steps=0, enable_model_summary=False)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model.on_load_checkpoint(best)  # the band calibration of these weights, written there at the end of fit
    model.to(device)
    metrics = evaluate_module(model, dm, split, out_dir, backtest_cutoffs=4)
    res = {"metrics": metrics, "fit_seconds": seconds, "steps": trainer.global_step, "epochs": trainer.current_epoch,
           "best_val_loss": float(ckpt.best_model_score), "params": sum(p.numel() for p in model.parameters())}  # fmt: skip
    if split != "val":
        # The point forecasts' validation errors: the choice between them must not look at the test split.
        val = score(model, dm, "val")["metrics"]
        res["val_metrics"] = {k: val[k] for k in val if k.startswith("all/tft")}
    return res


def bench_alibaba(shared: Path, cache: Path, device: str, max_steps: int, out_dir: Path, seed: int = 1337,
                  fused: bool = True, dropout: float = 0.1, ema: float = 0.0, layout: str = "channels",
                  normalizer: str = "group") -> dict[str, Any]:  # fmt: skip
    dm = alibaba_dm(shared, cache, eval_stride=6, num_workers=0, channel_independent=layout == "channels",
                    target_normalizer=normalizer)  # fmt: skip
    net = {"hidden_size": 32, "attention_head_size": 4, "hidden_continuous_size": 16, "dropout": dropout}
    res = fit_and_score(
        dm, "val", device, max_steps, 100, net, 3e-3, out_dir / "alibaba", seed=seed, fused=fused, ema=ema
    )
    res["seed"], res["fused"], res["dropout"], res["ema"] = seed, fused, dropout, ema
    res["layout"], res["target_normalizer"] = layout, normalizer
    res["windows"] = {k: len(v) for k, v in dm.datasets.items()}
    return res


def bench_etth1(
    shared: Path,
    cache: Path,
    device: str,
    max_steps: int,
    out_dir: Path,
    encoder_length: int = 336,
    hidden: int = 32,
    layout: str = "channels",
    dropout: float = 0.1,
    lr: float = 1e-3,
    point: str = "median",
    point_loss_weight: float = 0.0,
    seed: int = 1337,
    fused: bool = True,
    ema: float = 0.0,
    weight_decay: float = 0.0,
    lstm_layers: int = 1,
) -> dict[str, Any]:
    dm = etth1_dm(shared, cache, layout, encoder_length=encoder_length)
    net = {
        "hidden_size": hidden,
        "attention_head_size": 4,
        "hidden_continuous_size": hidden // 2,
        "dropout": dropout,
        "lstm_layers": lstm_layers,
    }
    res = fit_and_score(dm, "test", device, max_steps, 100, net, lr, out_dir / "etth1", point=point,
                        point_loss_weight=point_loss_weight, seed=seed, fused=fused, ema=ema,
                        weight_decay=weight_decay)  # fmt: skip
    res["seed"], res["fused"], res["ema"], res["weight_decay"] = seed, fused, ema, weight_decay
    res["encoder_length"], res["hidden_size"], res["lstm_layers"] = encoder_length, hidden, lstm_layers
    res["windows"] = {k: len(v) for k, v in dm.datasets.items()}
    res["target_normalizer"] = dm.target_normalizer
    res["layout"], res["batch_size"], res["dropout"], res["lr"] = layout, dm.batch_size, dropout, lr
    res["point"], res["point_loss_weight"] = point, point_loss_weight
    return res


def bench_calibration(ckpts: dict[str, str], cache: Path | None, split: str = "test") -> dict[str, Any]:
    """Coverage and pinball of each checkpoint's raw and calibrated bands on `split` (the calibration the
    checkpoint carries, else one fitted on its validation split here, as zoo.eval does)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from zoo.core.family import load_run
    from zoo.tft.calibrate import fit_module
    from zoo.tft.evaluate import score

    runs: dict[str, Any] = {}
    for name, path in ckpts.items():
        run = load_run(path)
        module = run.module
        data = OmegaConf.merge(
            run.config.data, {"num_workers": 0} | ({"cache_dir": str(cache)} if cache else {})
        )
        dm = instantiate(data)
        dm.prepare_data()
        dm.setup()
        stored = module.calibration is not None
        if not stored:
            module.calibration = fit_module(module, dm, "val")
        scored = score(module, dm, split)
        m = scored["metrics"]
        names = list(dm.targets) if getattr(dm, "channel_independent", False) else list(module.target_names)
        keys = ("coverage_p10_p90", "coverage_p2_p98", "pinball")
        m |= hindsight(module, scored, names)
        runs[name] = {"checkpoint": str(run.path), "stored_calibration": stored, "split": split, "targets": names,
                      "val_windows": module.calibration.windows, "test_windows": int(m["windows"]),
                      "overrides": list((run.config.get("zoo_run") or {}).get("overrides") or []),
                      "metrics": {f"{t}/{k}{s}": m[f"{t}/tft/{k}{s}"] for t in names for k in keys for s in ("", "_raw", "_rolling", "_hindsight")
                                  if f"{t}/tft/{k}{s}" in m}}  # fmt: skip
    return {"runs": runs}


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
    table = fit(q, actual, levels, list(module.target_names), kept, "hindsight")
    out: dict[str, float] = {}
    for t, target in enumerate(module.target_names):
        cal = table.apply(q[t], target, kept)
        groups = [(target, torch.ones(len(cal), dtype=torch.bool))] if kept is None else [
            (c, torch.tensor([k == c for k in kept])) for c in names]  # fmt: skip
        for label, sel in groups:
            band_metrics(out, label, actual[t][sel], levels, {"_hindsight": cal[sel]})
    return out


# -- report -------------------------------------------------------------------------------------------
LAYOUTS = {
    "joint": "one TFT forecasting the 7 targets jointly",
    "channels": "channel-independent (one univariate TFT shared by the 7 channels; the test windows are 7 x 2785)",
}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# TFT benchmark",
        "",
        "Written by `python -m benchmarks.tft` (see its docstring); every number below was measured by it.",
        "",
    ]
    for key, res in results.items():
        if key.startswith("_"):
            continue
        env = res.get("_env", {})
        lines.append(
            f"Environment of `{key}`: {env.get('machine', '?')}, torch {env.get('torch', '?')}, device {env.get('device', '?')}"
            + (f", {env['date']}" if env.get("date") else "")
            + f"; command: `{env.get('command', '?')}`"
        )
        lines.append("")
    if "loader" in results:
        r = results["loader"]
        lines += ["## Loader throughput (Alibaba sample, 5 min, 3 targets, encoder 96, prediction 24, batch 128)", "",
                  "| loader | samples/s |", "|---|---|",
                  f"| stock `TimeSeriesDataSet.to_dataloader` (0 workers) | {r['stock_samples_per_s']:,.0f} |",
                  f"| stock, 2 workers | {r['stock_2workers_samples_per_s']:,.0f} |",
                  f"| zoo precomputed (`data.loader=fast`, 0 workers) | {r['zoo_samples_per_s']:,.0f} |", "",
                  f"Speed-up over the stock loader: **{r['speedup']:.1f}x** (goal >= 10x) over {r['train_windows']:,} training windows.", ""]  # fmt: skip
    train_keys = [k for k in ("train", "train_gpu") if k in results]
    if train_keys:
        lines += ["## Training throughput (TFT hidden 32, Alibaba windows, batch 128; forward + backward + Adam step)", "",
                  "| device | zoo precomputed loader | stock loader |", "|---|---|---|"]  # fmt: skip
        for k in train_keys:
            r = results[k]
            lines.append(
                f"| {r['_env']['machine']} ({r['device']}) | {r['fast_train_samples_per_s']:,.0f} samples/s | {r['stock_train_samples_per_s']:,.0f} samples/s |"
            )
        lines.append("")
    for i, key in enumerate(sorted(k for k in results if k == "speed" or k.startswith("speed_"))):
        lines += speed_markdown(results[key], describe=i == 0)
    if "fleet" in results:
        r = results["fleet"]
        lines += [f"## Fleet memory ({r['hosts']} generated hosts x {r['days']:g} days x {r['step_minutes']}-min steps, `model=tft` data settings)", "",
                  "| rows | train / val windows | peak RSS | of which imports | bytes per row (peak over imports) | prepare | setup done | first step done |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {r['rows']:,} | {r['train_windows']:,} / {r['val_windows']:,} | {r['peak_rss_bytes'] / 2**30:.2f} GiB ({r['peak_rss_bytes'] / 1e9:.2f} GB) | "
                  f"{r['import_rss_bytes'] / 2**30:.2f} GiB | {r['bytes_per_row']:.0f} | {r['prepare_seconds']:.0f} s | {r['setup_seconds']:.0f} s | "
                  f"{r['first_step_seconds']:.0f} s |", "",
                  f"Measured on {r.get('cpu_count', '?')} cores with a load average of {r.get('load_average', ['?'])[0]} before / "
                  f"{r.get('load_average', ['?', '?'])[-1]} after: seconds on a busy machine overstate the idle 2-core time; RSS does not depend on it.", "",
                  f"Goals: peak RSS <= 2 GB and first step <= 30 s on 2 cores. At this many bytes per row, the largest fleet of this "
                  f"shape that fits in 24 GB is about **{r['hosts_in_24gb']:,} hosts** (x {r['days']:g} days at {r['step_minutes']} min).", ""]  # fmt: skip
    lines += alibaba_markdown(results)
    for key in sorted(k for k in results if k.startswith("etth1")):
        r = results[key]
        m = r["metrics"]
        targets = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
        point = r.get("point", "median")
        val = r.get("val_metrics", {})
        chosen = etth1_choice(r)
        ema = f", EMA of the weights (decay {r['ema']:g})" if r.get("ema") else ""
        mse = m[f"all/{chosen}/mse"]
        val_col = {
            label: f"{val[f'all/{label}/mse']:.3f}" if f"all/{label}/mse" in val else "-"
            for label in ("tft", "tft_mean")
        }
        lines += [f"## ETTh1 multivariate, horizon 96 (test split, z-normalized) [`{key}`]", "",
                  f"History {r.get('encoder_length', 336)} h, hidden size {r.get('hidden_size', 32)}, {r.get('lstm_layers', 1)} LSTM layer(s), target normalizer "
                  f"{r.get('target_normalizer', 'group')}, {LAYOUTS[r.get('layout', 'joint')]}, batch {r.get('batch_size', 64)}, dropout {r.get('dropout', 0.1)}, lr {r.get('lr', 1e-3):g}, point forecast {point}, point_loss_weight {r.get('point_loss_weight', 0.0):g}{ema}; {r['steps']} steps / {r['epochs']} epochs in {r['fit_seconds']:.0f} s, {r['params']:,} parameters, {int(m['windows'])} test windows.", "",
                  "| model | MSE | MAE | validation MSE |", "|---|---|---|---|",
                  f"| zoo TFT ({point}: `model.point`) | {'**' * (chosen == 'tft')}{m['all/tft/mse']:.3f}{'**' * (chosen == 'tft')} | {m['all/tft/mae']:.3f} | {val_col['tft']} |",
                  *([f"| zoo TFT, mean of the quantiles (the MSE-optimal point) | {'**' * (chosen == 'tft_mean')}{m['all/tft_mean/mse']:.3f}{'**' * (chosen == 'tft_mean')} | {m['all/tft_mean/mae']:.3f} | {val_col['tft_mean']} |"] if "all/tft_mean/mse" in m and point != "mean" else []),
                  f"| seasonal-naive (24 h) | {m['all/snaive/mse']:.3f} | {m['all/snaive/mae']:.3f} | |",
                  f"| naive (last value) | {m['all/naive/mse']:.3f} | {m['all/naive/mae']:.3f} | |",
                  "| DLinear (published) | 0.375 | 0.399 | |", "| PatchTST/64 (published) | 0.370 | 0.400 | |", "",
                  f"Goal MSE <= 0.40 (bold: the point forecast with the lower validation MSE, where measured): **{'met' if mse <= 0.40 else 'NOT met'}** ({mse:.3f}). Per target MSE of that point: "
                  + ", ".join(f"{t} {m[f'{t}/{chosen}/mse']:.3f}" for t in targets), ""]  # fmt: skip
    lines += seeds_markdown(results)
    if "calibration" in results:
        lines += calibration_markdown(results["calibration"])
    lines += ["## Notes", "",
              "- MAE ratio = TFT MAE / seasonal-naive MAE on the same windows (the goal's 'MASE vs seasonal-naive'); "
              "MASE columns use the M4 definition (errors over each series' in-sample seasonal-naive MAE).",
              "- Loader and CPU training numbers depend on how busy the machine's cores were; the ratio between loaders "
              "is measured in the same conditions, one after the other.",
              "- Each part's measurements are kept below (JSON), so running one part updates only its section.",
              "- ETTh1: settings and the point forecast are chosen on the validation split (validation MSE column); "
              "the test split is scored once per run. `conf/experiment/tft_etth1.yaml` holds the run with the lowest validation MSE.", ""]  # fmt: skip
    blob = json.dumps(results, default=float, sort_keys=True)
    return "\n".join(lines) + f"\n<!-- {RESULTS_TAG}\n{blob}\n-->\n"


ALIBABA_TARGETS = ("cpu_percent", "memory_percent", "disk_percent")


def speed_markdown(r: dict[str, Any], describe: bool = True) -> list[str]:
    """The speed part's table (one per thread count measured; the loops described above the first)."""
    lines = [f"## End-to-end training vs the stock loop ({r['device']}, {r['steps']} steps per loop in {r.get('rounds', 1)} rounds, "
             f"{r.get('threads', '?')} torch threads, torch.compile {'on' if r.get('compile') else 'off'})", ""]  # fmt: skip
    if describe:
        lines += ["Same weights and batches in every loop. *stock*: `TimeSeriesDataSet.__getitem__` + `_collate_fn` feeding "
                  "pytorch-forecasting's own forward; *fast loader*: the precomputed loader feeding that same forward; *zoo*: the "
                  "precomputed loader feeding the fused forward (`zoo.tft.fused`, numerically the same network)"
                  f"{' and the fused Adam step (the others: `torch.optim.Adam` as constructed by default)' if r.get('fused_adam') else ''}, "
                  "what `model=tft` trains; "
                  "*compute-only*: the zoo network on batches fetched beforehand. The loops take turns round by round; "
                  "**zoo / stock** is the median of the rounds' ratios (range beside it).", ""]  # fmt: skip
    lines += ["| recipe | stock loop | fast loader, stock forward | zoo loop | **zoo / stock** (goal >= 1.6x) | compute-only limit | batch |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for recipe in ("alibaba", "etth1"):
        if recipe in r:
            q = r[recipe]
            spread = q.get("round_speedups") or [q["speedup"]]
            fast = (
                f"{q['fast_loader_samples_per_s']:,.0f} samples/s"
                if "fast_loader_samples_per_s" in q
                else "—"
            )
            lines.append(f"| tft_{recipe} | {q['stock_samples_per_s']:,.0f} samples/s | {fast} | {q['zoo_samples_per_s']:,.0f} samples/s | "
                         f"**{q['speedup']:.2f}x** ({min(spread):.2f}–{max(spread):.2f}) | "
                         f"{q['compute_only_samples_per_s']:,.0f} samples/s | {q['batch_size']} |")  # fmt: skip
    lines.append("")
    return lines


def _alibaba_ratios(r: dict[str, Any]) -> list[float]:
    return [r["metrics"][f"{t}/tft/rel_mae_vs_snaive"] for t in ALIBABA_TARGETS]


def _forward(r: dict[str, Any]) -> str:
    """The network a run trained: results without a seed predate the fused forward."""
    return "fused" if r.get("fused", "seed" in r) else "stock"


def _regularization(r: dict[str, Any]) -> str:
    """Dropout and EMA decay of a run (runs before these settings: dropout 0.1, no EMA)."""
    ema = r.get("ema", 0.0)
    return f"dropout {r.get('dropout', 0.1)}, " + (f"EMA {ema}" if ema else "no EMA")


def _layout(r: dict[str, Any]) -> str:
    """Target layout and normalizer of an Alibaba run (runs before these options: joint, group)."""
    return f"{r.get('layout', 'joint')}, {r.get('target_normalizer', 'group')}"


def alibaba_markdown(results: dict[str, Any]) -> list[str]:
    """A section per Alibaba run (``alibaba`` or ``--alibaba-key``), then their MAE ratios side by side,
    each against the ``alibaba`` run's (the one issue 13 quotes: H100, before the fused forward)."""
    keys = sorted(k for k in results if k.startswith("alibaba") and "metrics" in results[k])
    lines: list[str] = []
    for key in keys:
        r = results[key]
        m = r["metrics"]
        how = (
            f"seed {r['seed']}, {_forward(r)} forward, {_regularization(r)}, {_layout(r)}; "
            if "seed" in r
            else ""
        )
        per = " (each window one channel: 3 per origin)" if r.get("layout") == "channels" else ""
        lines += [f"## Alibaba 2018 sample: TFT vs baselines (validation windows, last 20 % of each machine) [`{key}`]", "",
                  f"{how}{r['steps']} steps / {r['epochs']} epochs in {r['fit_seconds']:.0f} s, {r['params']:,} parameters, "
                  f"{int(m['windows'])} windows{per} (every 6th origin). The coverage column is the network's own band: the "
                  "calibration is fitted on these very windows.", "",
                  "| target | TFT MAE | seasonal-naive MAE | naive MAE | **MAE ratio TFT / s-naive** | TFT MASE | s-naive MASE | raw P10-P90 coverage | TFT sMAPE |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for t in ALIBABA_TARGETS:
            lines.append(f"| {t} | {m[f'{t}/tft/mae']:.3f} | {m[f'{t}/snaive/mae']:.3f} | {m[f'{t}/naive/mae']:.3f} | "
                         f"**{m[f'{t}/tft/rel_mae_vs_snaive']:.3f}** | {m[f'{t}/tft/mase']:.3f} | {m[f'{t}/snaive/mase']:.3f} | "
                         f"{m.get(f'{t}/tft/coverage_p10_p90_raw', m[f'{t}/tft/coverage_p10_p90']):.2f} | {m[f'{t}/tft/smape']:.1f} |")  # fmt: skip
        ratios = _alibaba_ratios(r)
        verdict = "met" if max(ratios) <= 0.85 else "NOT met"
        lines += ["", f"Goal (MAE ratio vs seasonal-naive <= 0.85 on each of cpu, memory, disk): **{verdict}** "
                  f"(worst {max(ratios):.3f}, mean {sum(ratios) / 3:.3f}). Walk-forward backtest over 4 origins: "
                  + ", ".join(f"{t} {m.get(f'backtest/{t}/rel_mae_vs_snaive', float('nan')):.3f}" for t in ALIBABA_TARGETS) + ".", ""]  # fmt: skip
    if len(keys) > 1:
        ref = _alibaba_ratios(results["alibaba"]) if "alibaba" in keys else None
        lines += ["## Alibaba MAE ratios vs seasonal-naive, run by run (lower is better)", "",
                  "| run | seed | forward | dropout, EMA | layout, normalizer | device | cpu | memory | disk | mean | no worse than `alibaba` on |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key in keys:
            r = results[key]
            ratios = _alibaba_ratios(r)
            kept = "-" if ref is None else f"{sum(v <= w for v, w in zip(ratios, ref))} of 3"
            lines.append(f"| `{key}` | {r.get('seed', 1337)} | {_forward(r)} | {_regularization(r)} | {_layout(r)} | {r.get('_env', {}).get('device', '?')} | "
                         + " | ".join(f"{v:.3f}" for v in ratios) + f" | {sum(ratios) / 3:.3f} | {kept} |")  # fmt: skip
        lines.append("")
    return lines


def etth1_choice(r: dict[str, Any]) -> str:
    """The point forecast scored against the goal: the one with the lower validation MSE (the
    configured point, or the quantiles' mean), chosen without looking at the test split."""
    val = r.get("val_metrics", {})
    return (
        "tft_mean"
        if val.get("all/tft_mean/mse", float("inf")) < val.get("all/tft/mse", float("inf"))
        else "tft"
    )


def seeds_markdown(results: dict[str, Any]) -> list[str]:
    """One table per ``--etth1-group``: the runs of one recipe over seeds, and their mean test MSE."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, r in results.items():
        if isinstance(r, dict) and r.get("group") and "metrics" in r:
            groups.setdefault(r["group"], []).append((key, r))
    lines: list[str] = []
    for group, runs in groups.items():
        runs.sort(key=lambda kr: kr[1].get("seed", 0))
        lines += [f"## ETTh1 over seeds [`{group}`] (goal: mean test MSE over 3 seeds <= 0.385)", "",
                  "| seed | section | steps | point (chosen on validation) | validation MSE | test MSE |", "|---|---|---|---|---|---|"]  # fmt: skip
        mses, vals = [], []
        for key, r in runs:
            chosen = etth1_choice(r)
            mse = r["metrics"][f"all/{chosen}/mse"]
            mses.append(mse)
            val = r.get("val_metrics", {}).get(f"all/{chosen}/mse")
            vals.append(val)
            lines.append(f"| {r.get('seed')} | `{key}` | {r['steps']} | {'mean of the quantiles' if chosen == 'tft_mean' else r.get('point', 'median')} | "
                         f"{'-' if val is None else f'{val:.3f}'} | {mse:.3f} |")  # fmt: skip
        mean = sum(mses) / len(mses)
        verdict = "met" if len(mses) >= 3 and mean <= 0.385 else "NOT met"
        # The recipe is the group with the lowest mean validation MSE (four decimals: groups come close).
        val_mean = "" if None in vals else f"; mean validation MSE {sum(vals) / len(vals):.4f}"
        lines += [
            "",
            f"Mean test MSE over {len(mses)} seeds: **{mean:.3f}** (goal <= 0.385 over 3 seeds: **{verdict}**){val_mean}.",
            "",
        ]
    return lines


def calibration_markdown(res: dict[str, Any]) -> list[str]:
    lines = ["## Band calibration (zoo.tft.calibrate): coverage and pinball loss before -> after", "",
             "Calibration fitted on the validation split after training (a scaled split-conformal shift per target, "
             "horizon and quantile level; docs/tft.md), scored on the test split: *static* is the table the checkpoint "
             "and export carry, *rolling* the same shifts refitted walk-forward from the latest 1,000 forecasts whose "
             "horizon had fully passed at each forecast origin (validation windows first; only past actuals), read at "
             "levels each refit moves by its coverage error (adaptive conformal, rate `zoo.tft.calibrate.ADAPT_RATE` "
             "per quarter horizon). Goal: "
             "P10-P90 within 3 points of 80 %, P2-P98 within 3 points of 96 %, pinball loss no worse than raw. "
             "*in hindsight*: the same table fitted on the scored windows themselves (nominal coverage by "
             "construction), the pinball loss a table of this form could at best reach there.", ""]  # fmt: skip
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    f4 = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    for name, r in res.get("runs", {}).items():
        m = r["metrics"]
        how = (
            "stored in the checkpoint"
            if r.get("stored_calibration")
            else "fitted on validation at evaluation"
        )
        trained = r.get("trained") or ("python -m zoo.train " + " ".join(r.get("overrides") or [])).strip()
        lines += [f"### {name}", "", f"Trained with `{trained}`; checkpoint `{r['checkpoint']}`; "
                  f"calibration {how} over {r['val_windows']} validation windows; {r['test_windows']} {r['split']} windows.", "",
                  "| target | P10-P90 raw | static | rolling | P2-P98 raw | static | rolling | pinball raw | static | rolling | in hindsight |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        ok: dict[str, list[bool]] = {"": [], "_rolling": []}
        beyond: list[str] = []
        for t in r["targets"]:
            pb_raw = m[f"{t}/pinball_raw"]
            for s in ok:
                c80, c96, pb = (
                    m.get(f"{t}/coverage_p10_p90{s}"),
                    m.get(f"{t}/coverage_p2_p98{s}"),
                    m.get(f"{t}/pinball{s}"),
                )
                if c80 is not None and pb is not None:
                    ok[s] += [
                        abs(c80 - 0.80) <= 0.03,
                        c96 is not None and abs(c96 - 0.96) <= 0.03,
                        pb <= pb_raw,
                    ]
            g = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{t}/")}.get
            lines.append(f"| {t} | {pct(g('coverage_p10_p90_raw'))} | **{pct(g('coverage_p10_p90'))}** | **{pct(g('coverage_p10_p90_rolling'))}** | "
                         f"{pct(g('coverage_p2_p98_raw'))} | **{pct(g('coverage_p2_p98'))}** | **{pct(g('coverage_p2_p98_rolling'))}** | "
                         f"{f4(pb_raw)} | {f4(g('pinball'))} | {f4(g('pinball_rolling'))} | {f4(g('pinball_hindsight'))} |")  # fmt: skip
            if g("pinball_hindsight") is not None and g("pinball_hindsight") > pb_raw:
                beyond.append(t)
        met = f"static {sum(ok[''])} of {len(ok[''])}"
        if ok["_rolling"]:
            met += f", rolling {sum(ok['_rolling'])} of {len(ok['_rolling'])}"
        lines += ["", f"Goal met on {met} checks (two coverages and pinball per target)."]
        if beyond:
            lines.append(f"Nominal coverage costs pinball loss on {', '.join(beyond)} even in hindsight: "
                         "there the two goals conflict for any table of this form.")  # fmt: skip
        lines.append("")
    return lines


def previous_results(md: Path) -> dict[str, Any]:
    if not md.is_file():
        return {}
    text = md.read_text()
    start = text.find(f"<!-- {RESULTS_TAG}\n")
    if start < 0:
        return {}
    body = text[start + len(RESULTS_TAG) + 6 :]
    try:
        return json.loads(body[: body.index("\n-->")])
    except (ValueError, json.JSONDecodeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tft", description=__doc__.split("\n\n")[0])
    # Training to convergence on 2 CPU cores takes hours: without a GPU the default is the throughput parts.
    p.add_argument(
        "--parts",
        default="loader,train,speed,fleet,alibaba,etth1"
        if torch.cuda.is_available()
        else "loader,train,speed,fleet",
    )
    p.add_argument("--shared", default=str(SHARED), help="folder holding metrics/ (../shared/data)")
    p.add_argument("--cache", default=str(ROOT / "data" / "cache"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--alibaba-steps", type=int, default=3000)
    p.add_argument("--alibaba-seed", type=int, default=1337, help="seed of the Alibaba training run")
    p.add_argument(
        "--alibaba-key", default="alibaba", help="name of this Alibaba run's section (keeps earlier runs)"
    )
    p.add_argument("--alibaba-dropout", type=float, default=0.1)
    p.add_argument("--alibaba-ema", type=float, default=0.0, help="EMA decay of the weights (0: off)")
    p.add_argument("--alibaba-layout", choices=["joint", "channels"], default="channels",
                   help="channels (the recipe): data.channel_independent=true; joint: one model forecasts the 3 targets")  # fmt: skip
    p.add_argument(
        "--alibaba-normalizer", choices=["group", "encoder"], default="group", help="data.target_normalizer"
    )
    p.add_argument("--stock-forward", action="store_true", help="alibaba/etth1: train with model.fused=false")
    p.add_argument("--etth1-steps", type=int, default=3000)
    p.add_argument(
        "--etth1-encoder", type=int, default=336, help="ETTh1 history length (the horizon stays 96)"
    )
    p.add_argument("--etth1-hidden", type=int, default=32)
    p.add_argument("--etth1-lstm-layers", type=int, default=1, help="model.net.lstm_layers")
    p.add_argument("--etth1-layout", choices=["channels", "joint"], default="channels")
    p.add_argument("--etth1-dropout", type=float, default=0.1)
    p.add_argument("--etth1-lr", type=float, default=1e-3)
    p.add_argument("--etth1-point", choices=["median", "mean"], default="median", help="model.point")
    p.add_argument("--etth1-point-loss-weight", type=float, default=0.0, help="model.point_loss_weight")
    p.add_argument("--etth1-ema", type=float, default=0.0,
                   help="EMA decay of the weights (Lightning's EMAWeightAveraging: validated and saved averaged); 0: off")  # fmt: skip
    p.add_argument(
        "--etth1-weight-decay", type=float, default=0.0, help="model.optim.weight_decay (Adam's L2)"
    )
    p.add_argument(
        "--etth1-key", default="etth1", help="name of this ETTh1 run's section (keeps earlier runs)"
    )
    p.add_argument("--etth1-seed", type=int, default=1337, help="seed of the ETTh1 training run")
    p.add_argument("--etth1-group", default=None,
                   help="runs of one recipe over seeds: their test MSEs are averaged in one table")  # fmt: skip
    p.add_argument("--calibration-ckpts", nargs="*", default=[], metavar="NAME=PATH",
                   help="calibration part: checkpoints (or run folders) to score, e.g. alibaba=logs/train/runs/<run>")  # fmt: skip
    p.add_argument("--calibration-trained", nargs="*", default=[], metavar="NAME=COMMAND",
                   help="calibration part: how each checkpoint was trained (recorded beside its numbers)")  # fmt: skip
    p.add_argument(
        "--calibration-cache", default=None, help="calibration part: data cache (default: the run's)"
    )
    p.add_argument("--speed-steps", type=int, default=40, help="timed steps per loop in the speed part")
    p.add_argument("--speed-rounds", type=int, default=5, help="rounds the speed part's loops take turns in")
    p.add_argument("--speed-recipes", default="alibaba,etth1")
    p.add_argument("--speed-compile", action="store_true", help="torch.compile the network in the zoo loop")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (model.cpu_threads)")
    p.add_argument("--fleet-hosts", type=int, default=500)
    p.add_argument("--fleet-days", type=float, default=30.0)
    p.add_argument("--fleet-step-minutes", type=int, default=5)
    p.add_argument("--out-dir", default=str(ROOT / "logs" / "bench" / "tft"))
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--md", default=str(ROOT / "docs" / "benchmarks" / "tft.md"))
    p.add_argument(
        "--merge", nargs="*", default=None, help="JSON results to merge into the Markdown (no benchmarking)"
    )
    args = p.parse_args(argv)
    quiet_script()
    if args.merge is not None and not args.merge:
        print("zoo: error: --merge needs the JSON files to merge (a run's --json)", file=sys.stderr)
        return 2
    if args.merge:
        results: dict[str, Any] = {}
        for f in args.merge:
            results.update(json.loads(Path(f).read_text()))
    else:
        shared, cache, out_dir = Path(args.shared), Path(args.cache), Path(args.out_dir)
        if not (shared / "metrics").is_dir():
            # `make bench` runs every family's benchmark: without the real data this one has nothing to measure.
            print(f"[zoo] tft bench skipped: {shared}/metrics not found (set --shared or ZOO_SHARED_DATA)")
            return 0
        if args.device == "cpu":
            torch.set_num_threads(args.threads)  # see TFTModule.cpu_threads
        env = {"machine": f"{platform.machine()} {os.cpu_count()} cpus" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
               "torch": torch.__version__, "device": args.device, "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": "python -m benchmarks.tft " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
        results = {}
        parts = args.parts.split(",")
        for part in parts:
            start = time.perf_counter()
            if part == "loader":
                res = bench_loader(shared, cache)
            elif part == "train":
                res = bench_train(shared, cache, args.device)
            elif part == "speed":
                res = bench_speed(shared, cache, args.device, args.speed_steps, tuple(args.speed_recipes.split(",")),
                                  args.speed_compile, args.speed_rounds)  # fmt: skip
            elif part == "fleet":
                res = bench_fleet(args.fleet_hosts, args.fleet_days, args.fleet_step_minutes)
            elif part == "alibaba":
                res = bench_alibaba(
                    shared,
                    cache,
                    args.device,
                    args.alibaba_steps,
                    out_dir,
                    args.alibaba_seed,
                    not args.stock_forward,
                    args.alibaba_dropout,
                    args.alibaba_ema,
                    args.alibaba_layout,
                    args.alibaba_normalizer,
                )
            elif part == "etth1":
                res = bench_etth1(
                    shared,
                    cache,
                    args.device,
                    args.etth1_steps,
                    out_dir,
                    args.etth1_encoder,
                    args.etth1_hidden,
                    args.etth1_layout,
                    args.etth1_dropout,
                    args.etth1_lr,
                    args.etth1_point,
                    args.etth1_point_loss_weight,
                    args.etth1_seed,
                    not args.stock_forward,
                    args.etth1_ema,
                    args.etth1_weight_decay,
                    args.etth1_lstm_layers,
                )
                if args.etth1_group:
                    res["group"] = args.etth1_group
            elif part == "calibration":
                pairs = [a.partition("=") for a in args.calibration_ckpts]
                if not pairs or any(not n or not v for n, _, v in pairs):
                    print(
                        "zoo: error: --parts calibration needs --calibration-ckpts NAME=PATH ...",
                        file=sys.stderr,
                    )
                    return 2
                cache_arg = Path(args.calibration_cache) if args.calibration_cache else None
                res = bench_calibration({n: v for n, _, v in pairs}, cache_arg)
                for n, _, v in (a.partition("=") for a in args.calibration_trained):
                    if n in res["runs"]:
                        res["runs"][n]["trained"] = v
                earlier = previous_results(Path(args.md)).get("calibration", {}).get("runs", {})
                res["runs"] = earlier | res["runs"]  # one name re-measured keeps the others
            else:
                print(f"zoo: error: unknown part {part}")
                return 2
            res["_env"] = env | {"seconds": round(time.perf_counter() - start, 1)}
            key = {"etth1": args.etth1_key, "alibaba": args.alibaba_key}.get(part, part)
            if part == "speed" and args.device == "cpu" and args.threads != 1:
                key = f"speed_{args.threads}threads"  # beside the 1-thread table (the recipes' default)
            results[key] = res
            print(
                f"[zoo] {part}: "
                + json.dumps({k: v for k, v in res.items() if k != "metrics"}, default=str)[:600],
                flush=True,
            )
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    md = Path(args.md)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(previous_results(md) | results))
    print(f"[zoo] wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
