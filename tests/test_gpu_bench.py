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
    page = out.read_text()
    assert "DRY RUN on CPU" in page and "FAILED" not in page
    for part in ("mfu", "stream", "events", "tft", "serve"):
        assert f"(part `{part}`:" in page
    assert page.count("| toy GPT (dry run) |") == 2  # plain and with the new options
    assert "experiment=gpt_300m" in page and "experiment=event_gpu" in page and "model=tft" in page
    assert "`train/loss`" in page or "`val/loss`" in page


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
    assert "Not measured: no CUDA device" in out.read_text()
