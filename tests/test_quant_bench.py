"""benchmarks.quant's verdicts and results: goals read the right way round per family, a miss is marked and
explained from the run's own numbers in the JSON the page is rendered from (a synthetic result: the real
run is `python -m benchmarks.quant`)."""

from __future__ import annotations

import json

from benchmarks.common import save, stamp
from benchmarks.quant import render, verdicts, why


def result(family: str, **over) -> dict:
    r = {
        "family": family, "params": 1000, "checkpoint": "/x/epoch0.ckpt", "batches": 2, "batch": "4 windows",
        "bytes": {"onnx_fp32": 1000, "onnx_int8": 300}, "weight_bytes": {"onnx_fp32": 800, "onnx_int8": 200},
        "ms": {"pytorch": 10.0, "onnx_fp32": 10.0, "onnx_int8": 6.0}, "size_ratio": 0.3, "latency_ratio": 0.6,
        "quality": {"pytorch": 1.0, "onnx_fp32": 1.0, "onnx_int8": 1.0}, "coverage": {k: 80.0 for k in ("pytorch", "onnx_fp32", "onnx_int8")},
        "metric": "m", "delta": 0.0, "matmul_share": 0.45, "int8_matmuls": 7, "width": 64,
        "training": {"recipe": "r", "overrides": ["a=b"], "seconds": 1.0},
    }  # fmt: skip
    r.update(over)
    r["verdicts"] = verdicts(r)
    r["why"] = why(r)
    return r


def test_goals_per_family_and_their_direction():
    assert verdicts(result("gpt")) == {"size": True, "latency": True, "quality": True}
    assert verdicts(result("gpt", delta=0.03))["quality"] is False  # loss up 0.03 nats > +0.02
    assert verdicts(result("events", delta=-0.6))["quality"] is False  # accuracy down 0.6 points
    assert verdicts(result("events", delta=0.4))["quality"] is True
    assert verdicts(result("tft", delta=0.021))["quality"] is False  # MAE up 2.1%
    assert verdicts(result("tft", latency_ratio=0.95))["latency"] is None  # no latency goal for TFT
    assert verdicts(result("events", size_ratio=0.36, latency_ratio=0.71)) == {
        "size": False,
        "latency": False,
        "quality": True,
    }


def test_a_missed_goal_is_marked_and_explained(tmp_path):
    ok, missed = result("gpt"), result("events", latency_ratio=0.78, size_ratio=1.2)
    assert ok["why"] == ""
    assert "latency: matrix products are 45% of the float graph's kernel time" in missed["why"]
    assert "size: 1,000 parameters, so 20% of the float file is graph" in missed["why"]
    saved = {**stamp("c", 1), "threads": 1, "note": "n", "results": {"gpt": ok, "events": missed}}
    save(tmp_path / "quant.json", saved, render)
    results = json.loads((tmp_path / "quant.json").read_text())["results"]
    assert results["events"]["latency_ratio"] == 0.78 and results["events"]["verdicts"]["latency"] is False
    assert results["gpt"]["latency_ratio"] == 0.6 and results["gpt"]["verdicts"]["latency"] is True
    assert [f for f, r in results.items() if r["why"]] == ["events"]  # only the miss is explained
