"""End to end: the CLI trains and evaluates; a learning test on synthetic hosts; real-data smoke tests."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli


@pytest.mark.slow
def test_cli_train_then_eval_with_baselines_backtest_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("zoo.train", "experiment=tft_small", "trainer=cpu", "trainer.max_steps=6", "trainer.limit_train_batches=3",
                   "trainer.limit_val_batches=2", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
                   "callbacks.rich_progress_bar=null", "data.num_workers=0", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and "val/mae/cpu_percent" in metrics["metrics"]
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert (run_dir / "plots" / "forecast.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.*"))
    ckpt = metrics["last_model_path"]
    eval_dir = tmp_path / "eval"
    proc = run_cli("zoo.eval", f"ckpt_path={ckpt}", "trainer=cpu", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={eval_dir}",
                   "backtest_cutoffs=3", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((eval_dir / "eval_metrics.json").read_text())["metrics"]
    for target in ("cpu_percent", "memory_percent", "disk_percent", "load_average"):
        for label in ("tft", "naive", "snaive"):
            for metric in ("mae", "rmse", "smape", "mase"):
                assert f"{target}/{label}/{metric}" in result
        assert 0.0 <= result[f"{target}/tft/coverage_p10_p90"] <= 1.0
    assert result["backtest/cutoffs"] == 3
    assert (eval_dir / "backtest.csv").is_file()
    assert (eval_dir / "plots" / "forecast.png").is_file() and (
        eval_dir / "plots" / "interpretation.png"
    ).is_file()
    assert list((eval_dir / "tensorboard").glob("events.*"))


@pytest.mark.slow
def test_learns_synthetic_hosts_beyond_seasonal_naive_towards_the_noise_floor(tmp_path):
    """The generator's noise is known: the TFT must beat seasonal-naive (which pays the noise twice)
    and land within a small factor of the noise floor (measured here: cpu 1.75 vs floor 0.80 and
    seasonal-naive 2.55 after 250 steps)."""
    import lightning.pytorch as pl

    from tests.tft.conftest import small_dm
    from zoo.tft.evaluate import score
    from zoo.tft.module import TFTModule

    noise = 1.0
    dm = small_dm(tmp_path, synthetic={"n_hosts": 4, "days": 21, "step_minutes": 60, "noise": noise, "seed": 3, "burst_rate": 0.0},
                  targets=["cpu_percent", "memory_percent"], batch_size=32, name="learn")  # fmt: skip
    dm.setup()
    pl.seed_everything(0)
    model = TFTModule(**dm.model_kwargs(), net={"hidden_size": 16, "attention_head_size": 2, "hidden_continuous_size": 8, "dropout": 0.0},
                      optim={"lr": 1e-2}, plots=False)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_steps=250, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         gradient_clip_val=0.1, use_distributed_sampler=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    m = score(model, dm, "val")["metrics"]
    floor = noise * (2 / torch.pi) ** 0.5  # MAE of a perfect forecast under Gaussian noise
    for target in ("cpu_percent", "memory_percent"):
        assert m[f"{target}/tft/mae"] < 0.85 * m[f"{target}/snaive/mae"], m
        assert m[f"{target}/tft/mae"] < 2.75 * floor, (m[f"{target}/tft/mae"], floor)


@pytest.mark.slow
@pytest.mark.data
def test_alibaba_sample_smoke(shared_data, compose, tmp_path):
    from zoo.core.run import build

    cfg = compose("model=tft", "data=tft/alibaba", "trainer=cpu", "debug=fdr", f"paths.shared_data_dir={shared_data}", "data.max_series=4",
                  "data.num_workers=0", "data.batch_size=32", "model.net.hidden_size=8", "model.net.attention_head_size=1")  # fmt: skip
    dm, model, trainer = build(cfg)
    assert model.target_names == ["cpu_percent", "memory_percent", "disk_percent"]
    assert dm.frame["host"].str.startswith("m_").all() and dm.frame["cpu_percent"].between(0, 101).all()
    step = dm.frame.groupby("series")["timestamp"].diff().dropna().unique()
    assert list(step) == [pd_timedelta("5min")]
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def pd_timedelta(text: str):
    import pandas as pd

    return pd.Timedelta(text).to_timedelta64()


@pytest.mark.data
@pytest.mark.parametrize("name", ["bitbrains", "nab_aws"])
def test_other_traces_load(shared_data, compose, name):
    from hydra.utils import instantiate

    cfg = compose(
        "model=tft", f"data=tft/{name}", f"paths.shared_data_dir={shared_data}", "data.max_series=2"
    )
    dm = instantiate(cfg.data)
    frame, manifest = dm.build_frame()
    assert frame["host"].nunique() == 2 and len(frame) > 2 * (dm.encoder_length + dm.prediction_length)
    for target in dm.targets:
        assert frame[target].notna().all()
    if name == "bitbrains":
        assert frame["memory_percent"].between(0, 100.5).all()


@pytest.mark.data
def test_etth1_standard_split(shared_data, compose, tmp_path):
    from hydra.utils import instantiate

    cfg = compose(
        "model=tft",
        "data=tft/etth1",
        f"paths.shared_data_dir={shared_data}",
        "data.encoder_length=48",
        "data.prediction_length=24",
    )
    dm = instantiate(cfg.data)
    dm.setup()
    cut = dm.cutoffs
    channels = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    assert dm.channel_independent and sorted(cut["train"]) == sorted(f"ETTh1/{c}" for c in channels)
    for c in channels:
        assert (cut["train"][f"ETTh1/{c}"], cut["val"][f"ETTh1/{c}"], cut["test"][f"ETTh1/{c}"]) == (
            8640 - 1,
            8640 + 2880 - 1,
            8640 + 2 * 2880 - 1,
        )
    ot = dm.frame[dm.frame["series"] == "ETTh1/OT"]
    train = ot[ot["time_idx"] <= 8640 - 1]
    assert abs(train["value"].mean()) < 1e-6 and abs(train["value"].std() - 1) < 1e-3  # training statistics
    test = dm.datasets["test"].decoded_index
    assert (
        test["time_idx_first_prediction"].min() == 8640 + 2880
        and test["time_idx_last"].max() == 8640 + 2 * 2880 - 1
    )
    assert len(test) == len(channels) * (2880 - 24 + 1)


def test_fused_adam_with_clipping_under_bf16_mixed(compose, monkeypatch):
    """model=tft trains under bf16-mixed on CPU (its LSTMs in float32: oneDNN has no bfloat16 LSTM for
    them), takes the fused Adam step and still clips its gradients where Lightning's mixed-precision
    plugin would refuse to (fused optimizer + clipping)."""
    from zoo.train import train

    fused, clips = [], []
    adam_init, clip = torch.optim.Adam.__init__, torch.nn.utils.clip_grad_norm_

    def init(self, *args, **kwargs):
        fused.append(kwargs.get("fused"))
        adam_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", init)
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clips.append(a[1]) or clip(*a, **k)
    )
    cfg = compose("experiment=tft_small", "trainer=cpu", "trainer.precision=bf16-mixed", "trainer.max_steps=3",
                  "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "data.num_workers=0",
                  "model.plots=false", "model.calibrate=false", "test=false", "~callbacks.rich_progress_bar",
                  "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")  # fmt: skip
    _, metrics = train(cfg)
    assert fused == [True] and clips == [cfg.trainer.gradient_clip_val] * 3
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
