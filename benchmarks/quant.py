"""`python -m benchmarks.quant`: int8 ONNX exports (``zoo.export format=onnx quantize=int8``) against the
float ones, per family, on models trained on real recipes for a short while:

  gpt     experiment=shakespeare_char (tinyshakespeare from ../shared/data/text), --gpt-steps steps
  events  experiment=event_log on data=events/helpdesk, --events-epochs epochs
  tft     experiment=tft_etth1 (ETTh1 from ../shared/data/metrics), --tft-steps steps

Per family: file size (model.onnx vs model.int8.onnx), CPU latency per validation batch of PyTorch fp32,
ONNX fp32 and ONNX int8 (same batches, interleaved in one process: each batch runs on the three in
rotating order, the median per batch is reported), and the validation quality of each (GPT: loss in
nats/token; events: next-activity accuracy; TFT: MAE of the point forecast and P10-P90 coverage).
Training runs go to --runs (kept: a second call reuses a finished run); writes
docs/benchmarks/quant.md and quant.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import rerender, save, section, stamp, table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
QUIET = ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", "logger=csv"]
GOALS = {"size": 0.35, "latency": 0.7, "gpt_loss": 0.02, "events_acc": -0.5, "tft_mae": 0.02}


def recipes(args: argparse.Namespace) -> dict[str, list[str]]:
    return {
        "gpt": ["experiment=shakespeare_char", f"data.path={SHARED / 'text' / 'tinyshakespeare.txt'}",
                f"trainer.max_steps={args.gpt_steps}", f"trainer.val_check_interval={min(200, args.gpt_steps)}",
                "model.optim.decay_steps=" + str(args.gpt_steps)],
        "events": ["model=event_predictor", "experiment=event_log", "data=events/helpdesk",
                   f"trainer.max_epochs={args.events_epochs}", f"trainer.limit_train_batches={args.events_batches}"],
        "tft": ["experiment=tft_etth1", f"trainer.max_steps={args.tft_steps}", "test=false",
                f"trainer.val_check_interval={min(100, args.tft_steps)}"],
    }  # fmt: skip


def trained(family: str, overrides: list[str], runs: Path, cache: Path) -> tuple[Path, float]:
    """The run folder of `family`'s recipe under `runs` (trained here unless a finished one is there)."""
    from zoo.core.config import compose_config
    from zoo.train import train

    out = runs / family
    done = out / "quant_bench_trained.json"
    if done.is_file():
        return out, json.loads(done.read_text())["seconds"]
    start = time.perf_counter()
    train(compose_config([*QUIET, *overrides, f"paths.cache_dir={cache}"], output_dir=out))
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"seconds": seconds, "overrides": overrides}))
    return out, seconds


def _datamodule(run: Any) -> Any:
    from zoo.core.run import _instantiate

    dm = _instantiate(run.config.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    return dm


class Timer:
    """Seconds per call of each backend, batch by batch: `run` calls them in an order that rotates with
    the batch, so no backend always runs first (cold caches) or last."""

    repeat = 3
    """Rounds per batch: a shared machine's load comes and goes within seconds; the median over rounds
    and batches keeps one busy moment from deciding a ratio."""

    def __init__(self, names: list[str]):
        self.names, self.times, self.calls = names, {n: [] for n in names}, 0

    def run(self, fns: dict[str, Any], *inputs: Any) -> dict[str, Any]:
        out = {}
        for _ in range(self.repeat):
            order = self.names[self.calls % len(self.names) :] + self.names[: self.calls % len(self.names)]
            for name in order:
                start = time.perf_counter()
                out[name] = fns[name](*inputs)
                self.times[name].append(time.perf_counter() - start)
            self.calls += 1
        return out

    def ms(self) -> dict[str, float]:
        return {n: 1000 * statistics.median(t[1:] or t) for n, t in self.times.items()}  # first call: warm-up


BACKENDS = ["pytorch", "onnx_fp32", "onnx_int8"]
MATMUL_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")


def matmul_share(reader: Any, inputs: tuple[Any, ...], threads: int, runs: int = 5) -> float:
    """Share of the float graph's kernel time spent in matrix products (onnxruntime's profiler on `runs`
    calls of `reader` on `inputs`): the most that int8 linear layers can speed up. An upper bound of the
    quantized share: activation x activation products (attention scores) count too."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.log_severity_level = True, 3
    options.intra_op_num_threads = threads
    options.profile_file_prefix = str(Path(reader.path).with_suffix(""))
    original = reader.session
    reader.session = ort.InferenceSession(str(reader.path), options, providers=["CPUExecutionProvider"])
    try:
        for _ in range(runs):
            reader(*inputs)
        trace = Path(reader.session.end_profiling())
    finally:
        reader.session = original
    by_op: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + float(event["dur"])
    trace.unlink()
    return sum(v for k, v in by_op.items() if k in MATMUL_OPS) / max(sum(by_op.values()), 1e-9)


def gpt_quality(run: Any, fp32: Path, int8: Path, batches: int, threads: int) -> dict[str, Any]:
    from zoo.gpt.export import OnnxLogits

    net = run.module.net.eval()
    readers = {
        "onnx_fp32": OnnxLogits(fp32 / "model.onnx", threads),
        "onnx_int8": OnnxLogits(int8 / "model.int8.onnx", threads),
    }
    dm = _datamodule(run)
    timer, loss, n = Timer(BACKENDS), dict.fromkeys(BACKENDS, 0.0), 0
    batch_shape = None
    for batch in islice(dm.val_dataloader(), batches):
        x, y = batch[0], batch[1]
        batch_shape = tuple(x.shape)
        with torch.no_grad():
            out = timer.run({"pytorch": net, **readers}, x)
        for k, logits in out.items():
            loss[k] += float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
        n += 1
    quality = {k: v / n for k, v in loss.items()}
    share = matmul_share(readers["onnx_fp32"], (x,), threads)
    return {"matmul_share": share, "batch": f"{batch_shape[0]} x {batch_shape[1]} tokens", "batches": n, "ms": timer.ms(),
            "quality": quality, "metric": "val loss (nats/token)",
            "delta": quality["onnx_int8"] - quality["onnx_fp32"]}  # fmt: skip


def events_quality(run: Any, fp32: Path, int8: Path, batches: int, threads: int) -> dict[str, Any]:
    from zoo.events.export import NextEventDistributions, OnnxEvents

    module = run.module.eval()
    names = list(module.names)
    wrapper = NextEventDistributions(module.net).eval()
    readers = {"onnx_fp32": OnnxEvents(fp32 / "model.onnx", names, threads),
               "onnx_int8": OnnxEvents(int8 / "model.int8.onnx", names, threads)}  # fmt: skip
    target = names.index(module.schema.target)
    dm = _datamodule(run)
    timer, right, total, n = Timer(BACKENDS), dict.fromkeys(BACKENDS, 0), 0, 0
    batch_size = None
    from zoo.events.schema import PAD

    for batch in islice(dm.val_dataloader(), batches):
        src, src_len, tgt_in, tgt = batch["src"], batch["src_len"], batch["tgt_in"], batch["tgt"]
        batch_size = src.shape[0]
        with torch.no_grad():
            out = timer.run({"pytorch": wrapper, **readers}, src, src_len, tgt_in)
        real = tgt[:, 0, target].ne(PAD)
        for k, o in out.items():
            probs = o[target] if k == "pytorch" else o[0][target]
            right[k] += int(((probs[:, 0].argmax(-1) == tgt[:, 0, target]) & real).sum())
        total += int(real.sum())
        n += 1
    quality = {k: 100.0 * v / total for k, v in right.items()}
    share = matmul_share(readers["onnx_fp32"], (src, src_len, tgt_in), threads)
    return {"matmul_share": share, "batch": f"{batch_size} windows", "batches": n, "ms": timer.ms(), "quality": quality,
            "metric": "next-activity accuracy (%)", "delta": quality["onnx_int8"] - quality["onnx_fp32"]}  # fmt: skip


def tft_quality(run: Any, fp32: Path, int8: Path, batches: int, threads: int) -> dict[str, Any]:
    from zoo.tft.export import OnnxForecaster

    module = run.module.eval()
    readers = {"onnx_fp32": OnnxForecaster(fp32 / "model.onnx", module, threads),
               "onnx_int8": OnnxForecaster(int8 / "model.int8.onnx", module, threads)}  # fmt: skip
    levels = [round(float(q), 4) for q in module.quantiles]
    lo, hi = levels.index(0.1), levels.index(0.9)
    dm = _datamodule(run)
    windows = dm.batches("val")
    size = int(dm.batch_size)
    timer = Timer(BACKENDS)
    err, covered, count = dict.fromkeys(BACKENDS, 0.0), dict.fromkeys(BACKENDS, 0.0), 0
    starts = list(range(0, len(windows), size))[:batches]
    for start in starts:
        x, y = windows.__getitems__(list(range(start, min(len(windows), start + size))))
        actual = y[0] if module.multi_target else [y[0]]
        with torch.no_grad():
            out = timer.run({"pytorch": lambda b: module.quantile_forecast(module.net(b)), **readers}, x)
        for k, qs in out.items():
            for q, a in zip(qs, actual):
                a = a.float()
                err[k] += float((module.point_of(q) - a).abs().sum())
                covered[k] += float(((a >= q[..., lo]) & (a <= q[..., hi])).float().sum())
        count += sum(a.numel() for a in actual)
    mae = {k: v / count for k, v in err.items()}
    coverage = {k: 100.0 * v / count for k, v in covered.items()}
    share = matmul_share(readers["onnx_fp32"], (x,), threads)
    return {"matmul_share": share, "batch": f"{size} windows", "batches": len(starts), "ms": timer.ms(), "quality": mae,
            "coverage": coverage, "metric": "MAE (normalized units)",
            "delta": mae["onnx_int8"] / mae["onnx_fp32"] - 1}  # fmt: skip


QUALITY = {"gpt": gpt_quality, "events": events_quality, "tft": tft_quality}


def weight_bytes(path: Path) -> int:
    """Bytes of a graph's initializers (weights, int8 scales and zero points): the file less its graph."""
    import onnx

    return sum(t.ByteSize() for t in onnx.load(str(path)).graph.initializer)


def count_ops(path: Path, ops: tuple[str, ...]) -> int:
    import onnx

    return sum(n.op_type in ops for n in onnx.load(str(path)).graph.node)


def width(module: Any) -> int | None:
    """The network's model width (GPT n_embd, events d_model, TFT hidden size), for the page."""
    hp = module.hparams.get("net") or {}
    return hp.get("n_embd") or hp.get("d_model") or hp.get("hidden_size")


def bench_family(family: str, run_dir: Path, out: Path, batches: int, threads: int) -> dict[str, Any]:
    from zoo.core.checkpoint import best_checkpoint_of_run
    from zoo.core.export import export_run
    from zoo.core.family import load_run

    run = load_run(best_checkpoint_of_run(run_dir))
    start = time.perf_counter()
    fp32 = export_run(run.module, out / family / "fp32", run.config, "onnx", run_dir=run_dir)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    int8 = export_run(run.module, out / family / "int8", run.config, "onnx", run_dir=run_dir, quantize="int8")
    int8_s = time.perf_counter() - start
    torch.set_num_threads(threads)
    result = QUALITY[family](run, fp32, int8, batches, threads)
    params = sum(p.numel() for p in run.module.parameters())
    size = {
        "onnx_fp32": (fp32 / "model.onnx").stat().st_size,
        "onnx_int8": (int8 / "model.int8.onnx").stat().st_size,
    }
    weights = {
        k: weight_bytes((fp32 / "model.onnx") if k == "onnx_fp32" else (int8 / "model.int8.onnx"))
        for k in size
    }
    result.update(family=family, checkpoint=str(run.path), params=params, bytes=size, weight_bytes=weights,
                  size_ratio=size["onnx_int8"] / size["onnx_fp32"],
                  latency_ratio=result["ms"]["onnx_int8"] / result["ms"]["onnx_fp32"],
                  export_seconds={"fp32": export_s, "int8": int8_s},
                  int8_ops=json.loads((int8 / "zoo.json").read_text())["onnx"]["ops"],
                  int8_matmuls=count_ops(int8 / "model.int8.onnx", ("MatMulInteger", "DynamicQuantizeMatMul")),
                  width=width(run.module))  # fmt: skip
    return result


def verdicts(r: dict[str, Any]) -> dict[str, bool | None]:
    family = r["family"]
    quality = {"gpt": r["delta"] <= GOALS["gpt_loss"], "events": r["delta"] >= GOALS["events_acc"],
               "tft": r["delta"] <= GOALS["tft_mae"]}[family]  # fmt: skip
    return {
        "size": r["size_ratio"] <= GOALS["size"],
        "latency": r["latency_ratio"] <= GOALS["latency"] if family in ("gpt", "events") else None,
        "quality": quality,
    }


def _mark(ok: bool | None) -> str:
    return "no goal" if ok is None else ("met" if ok else "**missed**")


def render(saved: dict[str, Any]) -> list[str]:
    """docs/benchmarks/quant.md from quant.json (its stamp, threads and note; per family its results)."""
    results = saved["results"]
    intro = (
        "`python -m zoo.export ckpt_path=... format=onnx quantize=int8` writes `model.int8.onnx` beside the float "
        "`model.onnx`: onnxruntime's `quant_pre_process` (constant folding) then `quantize_dynamic`: int8 weights (one scale per output channel) for every "
        "MatMul/Gemm with a weight operand, activations quantized per batch at run time. Embeddings, layer norms, "
        "softmax, attention-score products and TFT's LSTMs stay float (`zoo.core.onnx.INT8_OPS`). Latency: median "
        "ms per validation batch (median over the batches, each run 3 times), the three backends interleaved on "
        "the same batches in one process, "
        f"{saved['threads']} thread(s) each (torch and onnxruntime intra-op). Goals: size ≤ {GOALS['size']}x "
        f"the float file; int8 latency ≤ {GOALS['latency']}x float ONNX (GPT, events); quality within "
        f"+{GOALS['gpt_loss']} nats/token (GPT), {GOALS['events_acc']} points (events), "
        f"+{GOALS['tft_mae']:.0%} MAE (TFT)."
    )
    stamp = {**saved, "machine": f"{saved['machine']}; {saved['note']}"}
    lines = section("int8 ONNX exports: size, CPU latency, validation quality", stamp, intro)
    for family in ("gpt", "events", "tft"):
        r = results.get(family)
        if r is None:
            continue
        v = verdicts(r)
        t = r["training"]
        rows = []
        for k in BACKENDS:
            q = r["quality"][k]
            rows.append([k.replace("_", " "),
                         f"{r['bytes'][k] / 1e6:.2f} MB" if k in r["bytes"] else "–",
                         f"{r['weight_bytes'][k] / 1e6:.2f} MB" if k in r["weight_bytes"] else "–",
                         f"{r['ms'][k]:.2f}", f"{q:.4f}" if family != "events" else f"{q:.2f}",
                         *([f"{r['coverage'][k]:.1f}%"] if family == "tft" else [])])  # fmt: skip
        delta = {"gpt": f"{r['delta']:+.4f} nats/token", "events": f"{r['delta']:+.2f} points",
                 "tft": f"{r['delta']:+.2%} MAE"}[family]  # fmt: skip
        points = [
            f"- size int8 / fp32: **{r['size_ratio']:.3f}x** ({_mark(v['size'])}); weights alone "
            f"{r['weight_bytes']['onnx_int8'] / r['weight_bytes']['onnx_fp32']:.3f}x (the rest of each file is its "
            "graph; onnxruntime's pre-processing drops the dynamo exporter's per-node debug metadata from it)",
            f"- latency int8 / fp32 ONNX: **{r['latency_ratio']:.3f}x** ({_mark(v['latency'])}); "
            f"ONNX fp32 / PyTorch: {r['ms']['onnx_fp32'] / r['ms']['pytorch']:.3f}x; matrix products are "
            f"{r['matmul_share']:.0%} of the float graph's kernel time (onnxruntime profiler)",
            f"- quality int8 vs fp32 ONNX: **{delta}** ({_mark(v['quality'])})",
            *([f"- why: {r['why']}"] if r.get("why") else []),
        ]
        lines += [
            f"### {family}: {t['recipe']}",
            "",
            f"Trained {t['seconds']:.0f} s on this machine (`{' '.join(t['overrides'])}`), "
            f"{r['params']:,} parameters; best checkpoint `{Path(r['checkpoint']).name}`. "
            f"Validation: {r['batches']} batches of {r['batch']}.",
            "",
            *table(
                [
                    "backend",
                    "file size",
                    "of which weights",
                    "ms / batch",
                    r["metric"],
                    *(["P10-P90 coverage"] if family == "tft" else []),
                ],
                rows,
            ),  # fmt: skip
            "",
            *points,
            "",
        ]
    return lines


PAGES = {"quant": render}


def why(r: dict[str, Any]) -> str:
    """What a missed goal comes from, in this run's own measurements."""
    v, parts = r["verdicts"], []
    if v["size"] is False:
        graph = 1 - r["weight_bytes"]["onnx_fp32"] / r["bytes"]["onnx_fp32"]
        parts.append(
            f"size: {r['params']:,} parameters, so {graph:.0%} of the float file is graph, not weights; "
            f"dynamic quantization adds a quantize, a cast and a rescale node around each of its "
            f"{r['int8_matmuls']} quantized matrix products, so the graph grows while the weights shrink to "
            f"{r['weight_bytes']['onnx_int8'] / r['weight_bytes']['onnx_fp32']:.2f}x (the LSTMs' weights stay float)"
        )
    if v["latency"] is False:
        parts.append(
            f"latency: matrix products are {r['matmul_share']:.0%} of the float graph's kernel time; the rest "
            "(reshapes, transposes, embedding lookups, layer norms, softmax of a width-"
            f"{r.get('width', '?')} network) stays float, so even free int8 products could only cut the time to "
            f"{1 - r['matmul_share']:.2f}x"
        )
    if v["quality"] is False:
        parts.append("quality: int8 rounding of the linear layers' weights moves the metric past the goal")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="gpt,events,tft")
    p.add_argument("--runs", type=Path, default=ROOT / "logs" / "quant_bench", help="training runs (reused)")
    p.add_argument("--cache", type=Path, default=ROOT / "data" / "cache")
    p.add_argument("--gpt-steps", type=int, default=400)
    p.add_argument("--events-epochs", type=int, default=2)
    p.add_argument("--events-batches", type=int, default=150, help="training batches per epoch (events)")
    p.add_argument("--tft-steps", type=int, default=200)
    p.add_argument(
        "--batches", type=int, default=40, help="validation batches per family (quality and latency)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    p.add_argument("--note", default="", help="what else ran on the machine")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks", help="folder of quant.json/.md")
    p.add_argument(
        "--page-only", action="store_true", help="rewrite quant.md from quant.json, measure nothing"
    )
    args = p.parse_args(argv)
    if args.page_only:
        rerender(args.out / "quant.json", render)
        return
    if not SHARED.is_dir():
        sys.exit(f"benchmarks.quant needs the real data at {SHARED}")
    from zoo.core.logs import quiet_script

    quiet_script()
    families = [f for f in args.families.split(",") if f]
    torch.set_num_threads(args.threads)  # training too: a shared machine's cores are not all this run's
    table = recipes(args)
    json_path = args.out / "quant.json"
    results = json.loads(json_path.read_text()).get("results", {}) if json_path.is_file() else {}
    for family in families:
        run_dir, seconds = trained(family, table[family], args.runs, args.cache)
        r = bench_family(family, run_dir, args.runs / "exports", args.batches, args.threads)
        r["training"] = {"recipe": table[family][0 if family != "events" else 1].split("=")[1],
                         "overrides": table[family], "seconds": seconds}  # fmt: skip
        r["verdicts"] = verdicts(r)
        r["why"] = why(r)
        results[family] = r
        print(f"[quant] {family}: size {r['size_ratio']:.3f}x, latency {r['latency_ratio']:.3f}x, "
              f"quality delta {r['delta']:+.4g}, ms {r['ms']}", flush=True)  # fmt: skip
    command = shlex.join(["python", "-m", "benchmarks.quant", *(argv if argv is not None else sys.argv[1:])])
    saved = {**stamp(command, args.threads), "threads": args.threads, "note": args.note or "nothing else noted",
             "results": results}  # fmt: skip
    save(json_path, saved, render)
    print(f"[quant] wrote {args.out / 'quant.md'}")


if __name__ == "__main__":
    main()
