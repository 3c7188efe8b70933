"""The forecaster inside a Prometheus stack, measured (docs/prometheus.md): `python -m benchmarks.prom`.

Parts (``--parts``), all against a real Prometheus (Debian's, ``make test-prometheus`` installs it) serving
a generated fleet backfilled with ``promtool tsdb create-blocks-from openmetrics``:

  pull     samples/s of `zoo.tft.prometheus.load` (chunks under 11,000 points, ``parallel`` queries, Parquet
           parts, the frame) against a plain single-threaded ``requests`` loop of ``query_range`` over the
           same range and chunks (JSON parsed into Python floats), same server, same run; each in a fresh
           child process so its peak RSS is its own. Goals: >= 3x, peak RSS <= 2 GB at 500 hosts x 30 days
           x 5 min.
  monitor  seconds per round of the fleet monitor (`zoo.tft.fleetmonitor.FleetMonitor.round`: query every
           target, score, forecast every series in batches, publish) for 500 series at 1 torch thread, with
           a TFT trained for a few steps on the last two days of the same fleet. Goal: <= 2 s.
  fleet    the default CLI training run on 500 generated hosts x 30 days x 5 min (``model=tft ...
           trainer.max_steps=5 trainer.limit_val_batches=2``) measured whole: wall seconds and peak RSS of
           the child (end-of-fit calibration included). Goal: <= 2 GB.

The fleet served for pull and monitor has the four targets as gauges (``zoo_fleet_<target>{instance,job}``,
the generator's values), read with ``data.queries`` naming them: the pull measures the transfer, not the
cost of ``rate()`` (tests/prometheus reads node_exporter's own series through the default expressions).
Writes docs/benchmarks/prometheus.md and docs/benchmarks/prometheus.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import promstack
from benchmarks.common import header, save, stamp, table

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["cpu_percent", "memory_percent", "disk_percent", "load_average"]
QUERIES = {t: f"zoo_fleet_{t}" for t in TARGETS}
PEAK = (
    "import resource\ndef peak_rss():\n    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
)


def gauges_openmetrics(path: Path, hosts: int, days: float, step_s: int, end: float) -> dict[str, Any]:
    """The generated fleet's four targets as gauges ``zoo_fleet_<target>{instance, job="node"}``."""
    from zoo.tft.sources import synthetic_hosts

    frame = synthetic_hosts(n_hosts=hosts, days=days, step_minutes=step_s / 60, noise=1.0, seed=0)
    n = len(frame) // hosts
    stamps = np.char.mod("%d", (end - step_s * (n - 1) + step_s * np.arange(n)).astype(np.int64))
    with open(path, "w") as fh:
        for t in TARGETS:
            values = frame[t].to_numpy().reshape(hosts, n)
            fh.write(f"# TYPE zoo_fleet_{t} gauge\n")
            for h in range(hosts):
                head = f'zoo_fleet_{t}{{instance="host{h:03d}:9100",job="node"}} '
                lines = np.char.add(
                    np.char.add(np.char.add(head, np.char.mod("%.4f", values[h])), " "), stamps
                )
                fh.write("\n".join(lines.tolist()))
                fh.write("\n")
        fh.write("# EOF\n")
    return {"hosts": hosts, "steps": n, "start": end - step_s * (n - 1), "end": end}


def child(code: str, timeout: int = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


PLAIN_LOOP = """
import json, time, requests
{peak}
url, queries, start, end, step, max_points, encoding = {args}
t0 = time.perf_counter()
samples, rows = 0, []
session = requests.Session()
if encoding:
    session.headers["Accept-Encoding"] = encoding
for target, expr in queries.items():
    first = start
    while first <= end:
        last = min(end, first + (max_points - 1) * step)
        r = session.get(url + "/api/v1/query_range", params={{"query": expr, "start": first, "end": last, "step": step}})
        r.raise_for_status()
        for series in r.json()["data"]["result"]:
            sid = series["metric"]["instance"]
            for t, v in series["values"]:
                rows.append((sid, float(t), float(v)))
        first = last + step
samples = len(rows)
print(json.dumps({{"seconds": time.perf_counter() - t0, "samples": samples, "peak_rss_bytes": peak_rss()}}))
"""

ZOO_PULL = """
import json, shutil, time
{peak}
from zoo.tft import prometheus as prom
url, queries, start, end, step, parallel, folder = {args}
src = prom.make_source(url, queries, list(queries), start, end, step, None, {{"parallel": parallel}})
shutil.rmtree(folder, ignore_errors=True)
t0 = time.perf_counter()
frame = prom.load(src, folder, progress=False)
seconds = time.perf_counter() - t0
samples = int(frame[list(queries)].notna().to_numpy().sum())
print(json.dumps({{"seconds": seconds, "samples": samples, "rows": len(frame), "series": int(frame["series"].nunique()),
                   "chunks": len(src.chunks(prom.plan(src, __import__("pathlib").Path(folder)))), "peak_rss_bytes": peak_rss()}}))
"""


def bench_pull(url: str, info: dict[str, Any], step: str, parallel: int, work: Path) -> dict[str, Any]:
    step_s = int(float(step.removesuffix("min")) * 60)
    loop = (url, QUERIES, info["start"], info["end"], step_s, 11_000)
    plain = child(PLAIN_LOOP.format(peak=PEAK, args=repr((*loop, None))))  # requests' default: gzip
    # The same loop asking for uncompressed answers, as the zoo's pull does: how much of the gap is gzip.
    identity = child(PLAIN_LOOP.format(peak=PEAK, args=repr((*loop, "identity"))))
    zoo = child(ZOO_PULL.format(peak=PEAK, args=repr((url, QUERIES, info["start"], info["end"], step, parallel, str(work / "pull")))))  # fmt: skip
    assert zoo["samples"] == plain["samples"], (zoo, plain)
    return {"plain": {**plain, "samples_per_s": plain["samples"] / plain["seconds"]},
            "plain_identity": {**identity, "samples_per_s": identity["samples"] / identity["seconds"]},
            "speedup_vs_identity": identity["seconds"] / zoo["seconds"],
            "zoo": {**zoo, "samples_per_s": zoo["samples"] / zoo["seconds"], "parallel": parallel},
            "speedup": plain["seconds"] / zoo["seconds"]}  # fmt: skip


MONITOR = """
import json, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
{peak}
from zoo.tft.datamodule import MetricsDataModule
from zoo.tft.module import TFTModule
from zoo.tft.fleetmonitor import FleetMonitor
import lightning.pytorch as pl
url, queries, start, end, step, work, rounds, encoder, horizon = {args}
dm = MetricsDataModule(source="prometheus", url=url, queries=queries, targets=list(queries), start=end - 2 * 86400,
                       end=end, step=step, max_gap="1h", encoder_length=encoder, prediction_length=horizon,
                       static_categoricals=["host"], calendar=["hour_sin", "hour_cos"], num_workers=0,
                       eval_stride=200, cache_dir=work + "/cache", name="bench")
dm.prepare_data(); dm.setup()
model = TFTModule(**dm.model_kwargs(), plots=False)
pl.Trainer(max_steps=3, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
           enable_model_summary=False, accelerator="cpu").fit(model, dm)
torch.set_num_threads(1)
mon = FleetMonitor(model, work + "/monitor", url, queries, None, interval=1.0, publish_steps=1, metrics_port=0)
step_s = mon.step_s
times = []
for k in range(rounds, 0, -1):  # replay the last rounds of the served history, one step apart
    now = end - (k - 1) * step_s + 1.5
    t0 = time.perf_counter()
    assert mon.round(now=now)
    times.append(time.perf_counter() - t0)
mon.close()
print(json.dumps({{"round_seconds": times, "series": mon.n_series, "flags": mon.counts["flags"],
                   "threads": torch.get_num_threads(), "peak_rss_bytes": peak_rss(), "encoder_length": encoder,
                   "prediction_length": horizon}}))
"""


def bench_monitor(url: str, info: dict[str, Any], step: str, work: Path, rounds: int) -> dict[str, Any]:
    args = (url, QUERIES, info["start"], info["end"], step, str(work), rounds, 48, 12)
    res = child(MONITOR.format(peak=PEAK, args=repr(args)))
    res["median_round_seconds"] = float(np.median(res["round_seconds"]))
    return res


def bench_fleet_run(hosts: int, days: float, step_minutes: int, work: Path) -> dict[str, Any]:
    """The default CLI run, whole (data preparation, training, end-of-fit calibration, export, figures)."""
    cmd = [sys.executable, "-m", "zoo.train", "model=tft", "data=tft/synthetic", f"data.synthetic.n_hosts={hosts}",
           f"data.synthetic.days={days}", f"data.synthetic.step_minutes={step_minutes}", f"data.step={step_minutes}min",
           "trainer=cpu", "trainer.max_steps=5", "trainer.limit_val_batches=2", f"paths.cache_dir={work / 'cache'}",
           f"hydra.run.dir={work / 'run'}", "logger=none", "callbacks.rich_progress_bar=null"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # A wrapper whose only child is the run: RUSAGE_CHILDREN's peak is then the run's own (here it would
    # be the largest of every earlier child too).
    wrapper = ("import json, resource, subprocess, sys, time\nt0 = time.perf_counter()\n"
               f"run = subprocess.run({cmd!r}, capture_output=True, text=True)\n"
               "sys.stderr.write(run.stderr[-3000:]) if run.returncode else None\n"
               "print(json.dumps({'rc': run.returncode, 'seconds': time.perf_counter() - t0,"
               " 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, env=env, timeout=3600
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise RuntimeError(done.stderr[-3000:])
    seconds, peak = out["seconds"], out["peak_kb"]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    shown = " ".join(a for a in cmd[3:] if not a.startswith(("paths.", "hydra.", "logger", "callbacks.")))
    return {"command": f"python -m zoo.train {shown}", "seconds": seconds, "peak_rss_bytes": peak * 1024,
            "global_step": metrics.get("global_step")}  # fmt: skip


def measured(part: dict[str, Any]) -> str:
    said = [f"measured {part['measured']}"] if part.get("measured") else []
    said += [part["note"]] if part.get("note") else []
    return f" ({'; '.join(said)})" if said else ""


GB = 2**30


def render(res: dict[str, Any]) -> list[str]:
    """docs/benchmarks/prometheus.md from its JSON: the parts measured, each against its goal."""
    lines = header("Prometheus: pull, monitor, fleet run", res, level=1)
    lines += [f"Load average {res['load_average']} at the start and end (a shared machine: seconds are this "
              "run's, ratios within one run).", ""]  # fmt: skip
    if "pull" in res:
        p, f = res["pull"], res["fleet_served"]
        readers = [("plain `requests` loop of query_range, 1 thread, JSON -> floats", p["plain"])]
        if "plain_identity" in p:
            readers.append(("the same loop with `Accept-Encoding: identity` (no gzip, as the zoo asks)", p["plain_identity"]))  # fmt: skip
        readers.append(
            (f"zoo.tft.prometheus.load, {p['zoo']['parallel']} in parallel, parts + frame", p["zoo"])
        )
        rows = [[name, f"{r['seconds']:.1f}", f"{r['samples_per_s']:,.0f}", f"{r['peak_rss_bytes'] / GB:.2f} GB"]
                for name, r in readers]  # fmt: skip
        without_gzip = (
            f"; {p['speedup_vs_identity']:.2f}x the loop without gzip" if "speedup_vs_identity" in p else ""
        )
        lines += ["## Pull throughput (data=tft/prometheus)", "",
                  f"{f['hosts']} hosts x {f['steps']} steps x 4 targets = {p['zoo']['samples']:,} samples from a local "
                  f"Prometheus 2.42, {p['zoo']['chunks']} queries per target{measured(p)}.", "",
                  *table(["reader", "seconds", "samples/s", "peak RSS"], rows), "",
                  f"Speed-up {p['speedup']:.2f}x (goal >= 3x: {'met' if p['speedup'] >= 3 else 'NOT met'}){without_gzip}; "
                  f"pull peak RSS {p['zoo']['peak_rss_bytes'] / GB:.2f} GB (goal <= 2 GB: "
                  f"{'met' if p['zoo']['peak_rss_bytes'] <= 2 * GB else 'NOT met'}).", ""]  # fmt: skip
    if "monitor" in res:
        m = res["monitor"]
        ok = m["median_round_seconds"] <= 2
        lines += ["## Fleet monitor round (zoo.monitor source=prometheus)", "",
                  f"{m['series']} series, encoder {m['encoder_length']} -> {m['prediction_length']} steps, "
                  f"{m['threads']} torch thread{measured(m)}: rounds {', '.join(f'{s:.2f}' for s in m['round_seconds'])} s; median "
                  f"{m['median_round_seconds']:.2f} s (goal <= 2 s: {'met' if ok else 'NOT met'}).", ""]  # fmt: skip
    if "fleet" in res:
        r = res["fleet"]
        ok = r["peak_rss_bytes"] <= 2 * GB
        lines += ["## The default fleet CLI run, whole", "",
                  f"`{r['command']}`{measured(r)}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_bytes'] / GB:.2f} GB "
                  f"(goal <= 2 GB: {'met' if ok else 'NOT met'}); calibration on at most "
                  "zoo.tft.calibrate.MAX_WINDOWS = 20,000 sampled validation windows.", ""]  # fmt: skip
    return lines + [*res.get("notes", [])]


PAGES = {"prometheus": render}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="pull,monitor,fleet")
    p.add_argument("--hosts", type=int, default=500)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--step-minutes", type=int, default=5)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    p.add_argument("--previous", help="a JSON of earlier parts (their date kept) to render beside this run's")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    previous = json.loads(Path(args.previous).read_text()) if args.previous else {}
    missing = promstack.missing_parts()
    if missing and ({"pull", "monitor"} & set(parts)):
        raise SystemExit(f"benchmarks.prom: {missing}")
    command = "python -m benchmarks.prom " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict[str, Any] = {**stamp(command), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_average": [round(os.getloadavg()[0], 2)]}  # fmt: skip
    step = f"{args.step_minutes}min"
    with tempfile.TemporaryDirectory(prefix="zoo-prom-bench-") as tmp:
        work = Path(tmp)
        if {"pull", "monitor"} & set(parts):
            end = (time.time() // 3600) * 3600 - 3 * 3600
            om = work / "fleet.om"
            info = gauges_openmetrics(om, args.hosts, args.days, args.step_minutes * 60, end)
            res["fleet_served"] = {k: info[k] for k in ("hosts", "steps")}
            res["backfill_seconds"] = promstack.backfill(om, work / "server" / "data")
            om.unlink()
            with promstack.prometheus(work / "server") as url:
                if "pull" in parts:
                    res["pull"] = bench_pull(url, info, step, args.parallel, work)
                    print(json.dumps(res["pull"]), flush=True)
                if "monitor" in parts:
                    res["monitor"] = bench_monitor(url, info, step, work, args.rounds)
                    print(json.dumps(res["monitor"]), flush=True)
        if "fleet" in parts:
            res["fleet"] = bench_fleet_run(args.hosts, args.days, args.step_minutes, work / "fleet")
            print(json.dumps(res["fleet"]), flush=True)
    res["load_average"].append(round(os.getloadavg()[0], 2))
    for part in ("pull", "monitor", "fleet", "fleet_served", "backfill_seconds"):
        if part not in res and part in previous:  # an earlier run's part, with its own date
            res[part] = previous[part]
            if isinstance(res[part], dict):
                res[part].setdefault("measured", previous.get("date"))
    save(Path(args.out) / "prometheus.json", res, render)
    return res


if __name__ == "__main__":
    main()
