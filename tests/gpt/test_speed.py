"""The CPU MFU denominator is one number per machine, and step logging gated to the written steps loses
nothing: the logged rows and the final metrics are those of every-step logging."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from zoo.core import callbacks as cb
from zoo.train import train


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cb, "_measured_cpu_peak", {})
    return tmp_path / "xdg" / "zoo" / "cpu_peak.json"


def test_cpu_peak_is_measured_once_then_read_back(peak_cache, monkeypatch):
    first = cb.measured_cpu_peak("fp32", size=128, seconds=0.05, rounds=2)
    assert first > 0 and peak_cache.is_file()
    assert cb.measured_cpu_peak("fp32", size=128, seconds=0.05, rounds=2) == first

    # A new process (empty in-memory table) reads the file instead of probing again.
    monkeypatch.setattr(cb, "_measured_cpu_peak", {})
    monkeypatch.setattr(cb, "_probe_matmul_flops", lambda *a, **k: pytest.fail("probed again"))
    assert cb.measured_cpu_peak("fp32") == first
    peak, source = cb.device_peak_flops(torch.device("cpu"), "32-true")
    assert peak == first and str(peak_cache) in source
    (key,) = json.loads(peak_cache.read_text())
    assert f"{torch.get_num_threads()} threads" in key and "fp32" in key


def test_cpu_peak_is_keyed_by_thread_count(peak_cache, monkeypatch):
    probes = []
    monkeypatch.setattr(cb, "_probe_matmul_flops", lambda *a, **k: probes.append(1) or 1e9 * len(probes))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cb.measured_cpu_peak("fp32")
        torch.set_num_threads(2)
        two = cb.measured_cpu_peak("fp32")
    finally:
        torch.set_num_threads(threads)
    assert (one, two) == (1e9, 2e9) and len(json.loads(peak_cache.read_text())) == 2


class LastLoss(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = float(outputs["loss"])


def test_step_logs_are_those_of_every_step_logging(compose, tmp_path, peak_cache):
    last = LastLoss()
    import zoo.core.run as run

    build = run.build

    def with_last(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(last)
        return datamodule, model, trainer

    cfg = compose(
        "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
        "data.block_size=32", "data.batch_size=8", "trainer.max_steps=25", "trainer.val_check_interval=25",
        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=10", "logger=csv",
    )  # fmt: skip
    run.build = with_last
    try:
        _, metrics = train(cfg)
    finally:
        run.build = build
    rows = list(csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))))
    steps = {
        name: [int(r["step"]) for r in rows if r.get(name)] for name in ("train/loss", "train/grad_norm")
    }
    # Lightning writes step logs every log_every_n_steps batches; the gradient norm comes on those rows too.
    assert steps["train/loss"] == [9, 19] and steps["train/grad_norm"] == [9, 19]
    # The run's final metrics hold the last step's loss, as if it had been logged every step.
    assert metrics["train/loss"] == pytest.approx(last.loss, rel=1e-6)
