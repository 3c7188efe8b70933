"""`benchmarks/gpu.sh --dry-run`: every part of the GPU run (MFU with and without the recipe options, the
300-step gpt_300m streaming run, event_gpu, TFT 16-mixed, serving) runs on the CPU at toy size, so the
script a GPU machine will run cannot rot."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_script_dry_run_runs_every_part(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and summary["written"] == str(out)
    results = json.loads(out.with_suffix(".json").read_text())  # the page is rendered from it
    assert results["title"].startswith("DRY RUN on CPU") and results["command"].startswith(
        "bash benchmarks/gpu.sh"
    )
    parts = results["parts"]
    assert set(parts) == {"mfu", "stream", "events", "tft", "serve"}
    assert not any("failed" in r for r in parts.values()) and all(r["seconds"] > 0 for r in parts.values())
    rows = parts["mfu"]["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        ("toy GPT (dry run)", "plain"),
        ("toy GPT (dry run)", "new options"),
    ]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in rows)  # no GPU peak on the CPU
    assert (
        "experiment=gpt_300m" in parts["stream"]["command"]
        and "experiment=event_gpu" in parts["events"]["command"]
    )
    assert "model=tft" in parts["tft"]["command"]
    assert "train/loss" in parts["stream"]["metrics"] or "val/loss" in parts["stream"]["metrics"]
    assert parts["serve"]["serve"]["results"]["gpt"]["levels"]["8"]["requests"] == 8
    assert "DRY RUN on CPU" in out.read_text()


def test_gpu_script_without_a_gpu_says_nothing_was_measured(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the script would measure")
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.with_suffix(".json").read_text())
    assert results["title"] == "not measured (no GPU)" and "parts" not in results
    assert "Not measured: no CUDA device" in out.read_text()
