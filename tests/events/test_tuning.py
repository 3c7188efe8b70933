"""The event predictor's tuning aids: ``train/grad_norm`` logged like the other families, and the
``hparams_search=events_optuna`` sweep (two trials here, like GPT's in tests/test_cli.py)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli
from zoo.core.config import compose_config

QUIET = [
    "~callbacks.rich_progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY = ["data.synthetic.n_employees=4", "data.synthetic.n_weeks=12"]


def test_grad_norm_is_logged_on_the_written_steps(tmp_path, cache_dir):
    from zoo.train import train

    cfg = compose_config([*QUIET, "model=event_predictor", "experiment=event_cpu_baseline", *TINY, "logger=csv",
                          "trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1",
                          "trainer.log_every_n_steps=2", f"paths.cache_dir={cache_dir}"],
                         output_dir=tmp_path / "run")  # fmt: skip
    train(cfg)
    rows = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    norms = rows.dropna(subset=["train/grad_norm"])
    # Lightning writes steps 1, 3, 5 ((step + 1) % 2 == 0); the last batch (step 5) is one of them.
    assert norms["step"].astype(int).tolist() == [1, 3, 5]
    assert all(math.isfinite(v) and v > 0 for v in norms["train/grad_norm"])


@pytest.mark.slow
def test_events_optuna_sweep_runs_two_trials(tmp_path, cache_dir):
    proc = run_cli("zoo.train", "-m", "hparams_search=events_optuna", "hydra.sweeper.n_trials=2", *TINY,
                   "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
                   f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}", "logger=none", *QUIET,
                   timeout=600, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and set(results["best_params"]) == {
        "data.batch_size",
        "model.optim.lr",
        "model.net.d_model",
        "model.net.encoder_layers",
        "model.net.decoder_layers",
        "model.net.dropout",
    }
    trials = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert results["best_value"] == pytest.approx(min(t["metrics"]["val/loss"] for t in trials))
    # Each trial trained the event predictor with the values Optuna drew for it.
    for i in range(2):
        cfg = yaml.safe_load((tmp_path / str(i) / ".hydra" / "config.yaml").read_text())
        assert cfg["model"]["_target_"] == "zoo.events.EventModule"
        drawn = yaml.safe_load((tmp_path / str(i) / ".hydra" / "overrides.yaml").read_text())
        assert f"model.net.d_model={cfg['model']['net']['d_model']}" in drawn
