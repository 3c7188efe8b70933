"""python -m zoo.monitor: samples this machine, forecasts it with an exported TFT, flags actuals outside
their P2-P98 band, journals everything into Parquet parts, survives SIGKILL and restarts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.tft.calibrate import ADAPT_RATE
from zoo.tft.collect import JOURNAL, read
from zoo.tft.monitor import FLAGS, FORECASTS, SAMPLES, Monitor

TARGETS = ["cpu_percent", "memory_percent", "disk_percent", "load_average"]
STEP = "200ms"  # the model's data.step: a few samples per step at interval=0.05


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny TFT trained here on a history in the collector's schema, exported (calibration included)."""
    import lightning.pytorch as pl
    import torch

    from zoo.core.export import export_run
    from zoo.tft.datamodule import MetricsDataModule
    from zoo.tft.module import TFTModule

    root = tmp_path_factory.mktemp("monitor_model")
    rng = np.random.default_rng(0)
    n = 400
    stamps = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n) * 200, unit="ms")
    frames = []
    for h, host in enumerate(["a", "b"]):
        wave = np.sin(np.arange(n) / 8 + h)
        frames.append(pd.DataFrame({"timestamp": stamps, "host": host, "cpu_percent": 30 + 10 * wave + rng.normal(0, 2, n),
                                    "memory_percent": 50 + 2 * wave + rng.normal(0, 0.5, n),
                                    "disk_percent": 40 + rng.normal(0, 0.1, n), "load_average": 1 + 0.3 * wave + rng.normal(0, 0.05, n)}))  # fmt: skip
    pd.concat(frames).to_parquet(root / "history.parquet")
    dm = MetricsDataModule(source="file", path=str(root / "history.parquet"), columns={"timestamp": "timestamp", "series": "host"},
                           targets=TARGETS, static_categoricals=["host"], calendar=[], step=STEP, max_gap="1s", encoder_length=6,
                           prediction_length=3, batch_size=32, num_workers=0, cache_dir=str(root / "cache"), name="monitor")  # fmt: skip
    dm.prepare_data()
    dm.setup()
    pl.seed_everything(0)
    threads = torch.get_num_threads()
    model = TFTModule(**dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4}, plots=False)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_train_batches=3, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    torch.set_num_threads(threads)
    assert model.calibration is not None
    return export_run(model, root / "export", {})


def _load(export_dir):
    from zoo.core.family import load_run

    return load_run(export_dir).module


def test_monitor_writes_samples_forecasts_flags_and_restart_continues(export_dir, tmp_path):
    module = _load(export_dir)
    out = tmp_path / "mon"
    mon = Monitor(module, out, interval=0.05, forecast_every=4, flush_every=20)
    counts = mon.run(duration=3.0)
    assert counts["samples"] >= 20 and counts["forecasts"] >= 2, counts
    samples = read(out / SAMPLES)
    assert len(samples) == counts["samples"] and set(TARGETS) <= set(samples.columns)
    forecasts = read(out / FORECASTS, ("issued_at", "timestamp"))
    assert set(forecasts["target"]) == set(TARGETS) and set(forecasts["step"]) == {1, 2, 3}
    assert {"point", "q0.02", "q0.98"} <= set(forecasts.columns)
    assert (forecasts["q0.02"] <= forecasts["q0.5"]).all() and (forecasts["q0.5"] <= forecasts["q0.98"]).all()
    # Each forecast starts right after the last complete step before it was issued.
    origin = forecasts["timestamp"] - forecasts["step"] * pd.Timedelta(STEP)
    assert (origin < forecasts["issued_at"]).all() and (
        origin.groupby(forecasts["issued_at"]).nunique() == 1
    ).all()
    for sub in (SAMPLES, FORECASTS):
        assert list((out / sub).glob("part-*.parquet")) and not (out / sub / JOURNAL).exists()
    assert "cpu_percent" in str(mon.table().columns[0]._cells)  # the live table lists the targets

    # Restart: same folders, the history comes back, so it forecasts within its first few samples.
    again = Monitor(_load(export_dir), out, interval=0.05, forecast_every=2, flush_every=20)
    assert len(again.recent) > 0
    # A forecast made for the bin in progress with an impossible band: when the bin completes, a flag.
    bin_start = again._bin(pd.Timestamp.now("UTC").tz_convert(None))
    impossible = {"timestamp": bin_start.isoformat(), "target": "cpu_percent", "step": 2, "issued_at": bin_start.isoformat(),
                  "point": -50.0, "q0.02": -60.0, "q0.98": -40.0}  # fmt: skip
    again._expect(impossible)
    more = again.run(duration=1.5)
    assert more["forecasts"] >= 1
    total = read(out / SAMPLES)
    assert len(total) == counts["samples"] + more["samples"] and total["timestamp"].is_monotonic_increasing
    flags = read(out / FLAGS)
    mine = flags[
        (flags["timestamp"] == bin_start)
        & (flags["target"] == "cpu_percent")
        & (flags["step"] == 2)
        & (flags["issued_at"] == bin_start)  # a real forecast for that bin may be flagged too (a busy CPU)
    ]
    assert len(mine) == 1 and mine["side"].iloc[0] == "above" and mine["actual"].iloc[0] >= 0


def test_failing_forecast_is_logged_once_and_collection_goes_on(export_dir, tmp_path, caplog):
    module = _load(export_dir)
    mon = Monitor(module, tmp_path / "mon", interval=0.05, forecast_every=2, history=3)  # history too short
    with caplog.at_level(logging.WARNING, logger="zoo.monitor"):
        counts = mon.run(duration=1.5)
    failures = [r for r in caplog.records if "forecast failed" in r.getMessage()]
    assert counts["failed"] >= 3 and counts["forecasts"] == 0
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert len(read(tmp_path / "mon" / SAMPLES)) == counts["samples"] >= 10


def test_bad_options_are_one_line_errors(tmp_path):
    from omegaconf import OmegaConf

    from zoo.core.errors import ZooError
    from zoo.tft.monitor import _check

    def cfg(**kw):
        return OmegaConf.create({"export": str(tmp_path), "ckpt_path": None, "interval": 1, "forecast_every": 2,
                                 "flush_every": 10, "history": None, "duration": None, "out": str(tmp_path / "m"),
                                 "live": "auto"} | kw)  # fmt: skip

    assert _check(cfg()) == ("export", str(tmp_path))
    for kw, message in (({"export": None}, "give one of export="), ({"ckpt_path": "x"}, "give one of export="),
                        ({"interval": 0}, "interval=0 must be a positive number"),
                        ({"forecast_every": 1.5}, "forecast_every=1.5 must be a whole number"),
                        ({"live": "sometimes"}, "live=sometimes"),
                        ({"recalibrate": -1}, r"recalibrate=-1 must be a whole number of forecasts >= 0"),
                        ({"recalibrate_min": 1}, r"recalibrate_min=1 must be .* >= 2")):  # fmt: skip
        with pytest.raises(ZooError, match=message):
            _check(cfg(**kw))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ZooError, match="is a file"):
        _check(cfg(out=str(tmp_path / "file" / "m")))


@pytest.mark.slow
def test_cli_bad_option_is_one_line(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("zoo.monitor", f"export={tmp_path}", "interval=0", f"out={tmp_path / 'm'}", timeout=300)
    assert proc.returncode == 2 and "interval=0 must be a positive number" in proc.stderr


@pytest.mark.slow
def test_sigkill_loses_no_journaled_sample(export_dir, tmp_path):
    """The CLI, killed with SIGKILL while every sample is still only in the journal, then restarted."""
    out = tmp_path / "mon"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "zoo.monitor", f"export={export_dir}", "interval=0.05", "forecast_every=5",
           "flush_every=100000", f"out={out}", "duration=300", "live=false", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = out / SAMPLES / JOURNAL
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.is_file() and len(journal.read_text().splitlines()) >= 20:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = journal.read_text().splitlines()
    journaled = set()
    for line in lines:
        try:
            journaled.add(pd.Timestamp(json.loads(line)["timestamp"]).tz_convert(None))
        except ValueError:
            pass  # a line cut by the kill mid-write (never fsync'ed, so never journaled)
    assert len(journaled) >= 20 and not list((out / SAMPLES).glob("part-*.parquet"))
    restarted = Monitor(_load(export_dir), out, interval=0.05, forecast_every=5)
    assert not journal.exists()  # the restart rolled the journal into a part
    restarted.run(duration=0.5)
    kept = set(read(out / SAMPLES)["timestamp"])
    assert journaled <= kept and len(kept) > len(journaled)


def test_bands_are_refitted_from_matured_forecasts_and_kept_across_restarts(export_dir, tmp_path):
    module = _load(export_dir)
    static = module.calibration.shift.clone()
    out = tmp_path / "mon"
    mon = Monitor(module, out, interval=0.05, forecast_every=4, recalibrate=20, recalibrate_min=10)
    levels = module.quantiles
    P = module.prediction_length
    # The network's own band is [-1, 1] around 0 at P10-P90 and every actual comes in at 3: far above.
    raw = {f"raw_q{v:g}": q for v, q in zip(levels, [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], strict=True)}
    issued_row = raw | {
        k[len("raw_") :]: v for k, v in raw.items()
    }  # as issued (calibrated): the same band here
    for i in range(12):
        issued = f"2024-01-01T00:00:{i:02d}.000000Z"
        fc = pd.DataFrame([{"target": t, "step": h + 1, **issued_row} for t in TARGETS for h in range(P)])
        mon._open_forecasts(fc, issued)
        for t in TARGETS:
            for h in range(P):
                if i == 11 and t == "cpu_percent" and h == P - 1:
                    continue  # one step still waiting: that forecast has not matured
                mon._settle({"issued_at": issued, "step": h + 1}, t, 3.0 if i % 4 else None)
    # Forecasts with a step that got no sample (issues 0, 4, 8) are dropped: 9 of the 12 matured for
    # each target but cpu, whose last is still open.
    assert len(mon.residuals["memory_percent"]) == 9 and len(mon.residuals["cpu_percent"]) == 8
    assert mon.counts["refits"] == 0  # fewer than recalibrate_min
    for i in range(12, 16):
        issued = f"2024-01-01T00:00:{i:02d}.000000Z"
        mon._open_forecasts(
            pd.DataFrame([{"target": "memory_percent", "step": h + 1, **issued_row} for h in range(P)]),
            issued,
        )
        for h in range(P):
            mon._settle({"issued_at": issued, "step": h + 1}, "memory_percent", 3.0)
    assert mon.counts["refits"] == 4 and len(mon.residuals["memory_percent"]) == 13
    row = module.calibration.row("memory_percent")
    assert module.calibration is mon.bands  # forecast() applies the refitted table
    assert not torch.equal(module.calibration.shift[row], static[row])
    cpu = module.calibration.row("cpu_percent")
    assert torch.equal(module.calibration.shift[cpu], static[cpu])
    q = torch.tensor([[list(raw.values())] * P])
    band = module.calibration.apply(q, "memory_percent")[0]
    assert (band[:, levels.index(0.98)] >= 3.0 - 1e-5).all() and (band[:, levels.index(0.5)] == 0).all()
    # Every actual fell above every issued quantile: each matured forecast raised the levels the shifts
    # are read at by rate * tau (P98 up to the largest residual), the median's stays 0.5.
    tau = torch.tensor(levels)
    assert 0 < mon.adapt_scale <= 1
    for name, n in (("memory_percent", 13), ("cpu_percent", 8)):
        step = (
            ADAPT_RATE * mon.adapt_scale * (tau * (1 - tau) / 0.09).clamp(max=1.0)
        )  # the tails' steps are smaller
        want = (tau + n * step * tau).clamp(max=1.0)
        want[levels.index(0.5)] = 0.5
        got = module.calibration.level[module.calibration.row(name)]
        assert torch.allclose(got, want.expand_as(got), atol=1e-5), (name, got[0], want)
    # A restart goes on from the refitted table kept in out/calibration.json.
    again = Monitor(_load(export_dir), out, interval=0.05, forecast_every=4)
    assert torch.equal(again.bands.shift, mon.bands.shift) and torch.equal(again.bands.level, mon.bands.level)
    off = Monitor(_load(export_dir), tmp_path / "off", interval=0.05, forecast_every=4, recalibrate=0)
    assert off.bands is None and torch.equal(off.module.calibration.shift, static)
