"""(a) A backfilled fleet in a real Prometheus: `zoo.train data=tft/prometheus` trains and `zoo.eval` scores."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import run_cli


def test_pull_matches_the_generated_fleet(fleet_prometheus, tmp_path):
    """The default node_exporter expressions give back the generated targets (CPU through a 5-minute rate)."""
    from zoo.tft import prometheus as prom

    url, info = fleet_prometheus
    src = prom.make_source(url, None, list(prom.DEFAULT_QUERIES), info["start"], info["end"], "1min", None,
                           {"max_points": 2000, "parallel": 3})  # fmt: skip
    assert len(src.chunks()) == 6  # 10,080 steps in chunks of 2,000
    frame = prom.load(src, tmp_path / "pull", progress=False)
    assert frame["series"].nunique() == 50 and len(frame) == 50 * info["steps"]
    gen = info["frame"]
    host = frame[frame["series"] == "host007:9100"].reset_index(drop=True)
    want = gen[gen["series"] == "host07"].reset_index(drop=True)
    np.testing.assert_allclose(host["memory_percent"], np.clip(want["memory_percent"], 0, 100), atol=1e-6)
    np.testing.assert_allclose(host["disk_percent"], np.clip(want["disk_percent"], 0, 100), atol=1e-6)
    np.testing.assert_allclose(host["load_average"], np.clip(want["load_average"], 0, None), atol=1e-4)
    # rate over [5m] (both ends included in Prometheus 2): the mean busy share of the last 5 increments
    busy = np.clip(want["cpu_percent"].to_numpy(), 0, 100)
    mean5 = np.convolve(busy, np.ones(5) / 5, mode="valid")  # mean5[i] = mean(busy[i : i + 5])
    np.testing.assert_allclose(host["cpu_percent"].to_numpy()[10:], mean5[6:], atol=1e-3)


def test_train_then_eval_from_prometheus(fleet_prometheus, tmp_path):
    url, info = fleet_prometheus
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    data = [f"data.url={url}", f"data.start={info['start']:.0f}", f"data.end={info['end']:.0f}", "data.eval_stride=60",
            "data.num_workers=0", f"paths.cache_dir={cache}"]  # fmt: skip
    proc = run_cli("zoo.train", "model=tft", "data=tft/prometheus", "trainer=cpu", *data, "trainer.max_steps=4",
                   "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "model.net.hidden_size=8",
                   "model.net.hidden_continuous_size=4", "model.net.attention_head_size=1", "model.plots=false",
                   f"hydra.run.dir={run_dir}", "callbacks.rich_progress_bar=null", "logger=none", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    [cached] = [p for p in (cache / "tft").iterdir() if (p / "manifest.json").is_file()]
    plan = json.loads((cached / "pull" / "pull.json").read_text())
    assert plan["series"] == 50 and plan["chunk_steps"] == 5000  # 250,000 samples per query / 50 series
    assert (
        len(list((cached / "pull").glob("*.parquet"))) == 4 * 3
    )  # 4 targets x 3 chunks, kept with the frame
    eval_dir = tmp_path / "eval"
    proc = run_cli("zoo.eval", f"ckpt_path={metrics['last_model_path']}", "trainer=cpu", f"paths.cache_dir={cache}",
                   f"hydra.run.dir={eval_dir}", "backtest_cutoffs=2", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((eval_dir / "eval_metrics.json").read_text())["metrics"]
    for target in ("cpu_percent", "memory_percent", "disk_percent", "load_average"):
        for label in ("tft", "naive", "snaive", "linear", "holt"):
            assert np.isfinite(result[f"{target}/{label}/mae"])
    assert "best baseline" in proc.stdout
