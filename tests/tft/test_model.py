"""The TFT module: builds from the datamodule, trains a step multi/single-target, fp16-safe mask,
checkpoints that load with weights_only=True, and safetensors exports that predict identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from zoo.core.run import build
from zoo.tft.model import DEFAULT_MASK_BIAS, FP16_MASK_BIAS
from zoo.tft.module import TFTModule

NET = {"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4, "dropout": 0.0}


def small_module(dm, seed=0, **kw):
    torch.manual_seed(seed)
    return TFTModule(**dm.model_kwargs(), net=NET, **kw)


def test_fast_dev_run_multi_target(compose):
    cfg = compose("model=tft", "trainer=cpu", "debug=fdr", "data.synthetic.days=6", "data.num_workers=0")
    dm, model, trainer = build(cfg)
    assert model.target_names == ["cpu_percent", "memory_percent", "disk_percent", "load_average"]
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    for name in model.target_names:
        assert torch.isfinite(metrics[f"val/mae/{name}"])
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])


def test_fast_dev_run_single_target(compose):
    cfg = compose(
        "model=tft",
        "trainer=cpu",
        "debug=fdr",
        "data.synthetic.days=6",
        "data.num_workers=0",
        "data.targets=[cpu_percent]",
        "data.loader=stock",
    )
    dm, model, trainer = build(cfg)
    assert not model.multi_target and model.target_names == ["cpu_percent"]
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["val/mae/cpu_percent"])


def test_16_mixed_config_builds_fp16_safe_model(compose, multi_dm):
    """16-mixed is refused on CPU by the entry point, so build the model as it would be on a GPU."""
    cfg = compose("model=tft", "trainer=gpu", "trainer.precision=16-mixed")
    model = instantiate(cfg.model, _convert_="all", **multi_dm.model_kwargs())
    attention = model.net.multihead_attn.attention
    assert model.mask_bias == attention.mask_bias == FP16_MASK_BIAS
    assert torch.isfinite(torch.tensor(attention.mask_bias, dtype=torch.float16))
    # The attention itself in float16 with a causal mask: finite with the zoo's bias...
    q = torch.randn(2, 5, 4, dtype=torch.float16)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1).expand(2, -1, -1)
    out, attn = attention(q, q, q, mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(attn).all()
    assert float(attn[0, 0, 1:].abs().max()) == 0.0  # masked positions get no weight
    # ...while pytorch-forecasting's default cannot even be written into a float16 tensor.
    attention.mask_bias = DEFAULT_MASK_BIAS
    with pytest.raises(RuntimeError, match="overflow"):
        attention(q, q, q, mask=mask)


def test_32_and_bf16_keep_the_default_mask_bias(compose, multi_dm):
    for precision in ("32-true", "bf16-mixed"):
        cfg = compose("model=tft", "trainer=cpu", f"trainer.precision={precision}")
        model = instantiate(cfg.model, _convert_="all", **multi_dm.model_kwargs())
        assert model.net.multihead_attn.attention.mask_bias == DEFAULT_MASK_BIAS


def test_safetensors_roundtrip_gives_identical_predictions(multi_dm, tmp_path):
    from zoo.tft.predict import forecast

    model = small_module(multi_dm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = multi_dm.batches("train").__getitems__(list(range(16)))
    for _ in range(3):  # move the weights away from their initialization
        opt.zero_grad()
        model._loss(x, y, model(x)).backward()
        opt.step()
    out_dir = model.export(tmp_path / "export", multi_dm)
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file()
    loaded = TFTModule.from_export(out_dir)
    before = model.predict_batches(multi_dm.batches("val"))["quantiles"]
    after = loaded.predict_batches(multi_dm.batches("val"))["quantiles"]
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    fresh = small_module(multi_dm, seed=1).predict_batches(multi_dm.batches("val"))["quantiles"]
    assert not torch.equal(fresh[0], before[0])
    # Prediction from raw recent rows, for a host the model never saw, without the training data.
    raw = multi_dm.raw_frame()
    recent = raw[raw["series"] == "host00"].tail(40).assign(series="new-host")
    fc = forecast(loaded, recent)
    assert set(fc["target"]) == set(loaded.target_names) and len(fc) == 4 * loaded.prediction_length
    assert (
        fc[["q0.1", "q0.5", "q0.9"]].notna().all().all()
        and (fc["timestamp"] > recent["timestamp"].max()).all()
    )


def test_hparams_are_plain_containers(multi_dm):
    """Checkpoints load with torch.load(weights_only=True): no pickled objects in the hyperparameters."""
    import io

    model = small_module(multi_dm)
    buf = io.BytesIO()
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    again = TFTModule(**ckpt["hyper_parameters"])
    again.load_state_dict(ckpt["state_dict"])
    x, _ = multi_dm.batches("val").__getitems__([0, 1])
    model.eval()
    again.eval()
    assert torch.equal(model(x)["prediction"][0], again(x)["prediction"][0])


def test_quantiles_must_hold_median_and_p10_p90(multi_dm):
    from zoo.core.errors import ZooError

    with pytest.raises(ZooError, match=r"model.quantiles=\[0.25, 0.5, 0.75\] must contain 0.1, 0.5 and 0.9"):
        TFTModule(**multi_dm.model_kwargs(), quantiles=[0.25, 0.5, 0.75])


def test_channel_independent_layout_trains_scores_and_forecasts_per_target(cache_dir, tmp_path):
    """data.channel_independent: every (host, target) is a series of the one target `value`; the windows,
    their values and the cutoffs are the joint layout's; scores break down by target; forecasts come
    back under the original host and target names, on the original scale."""
    from tests.tft.conftest import small_dm
    from zoo.tft.evaluate import backtest, score
    from zoo.tft.predict import forecast

    targets = ["memory_percent", "load_average"]  # levels ~44 and ~1.6: a swapped or unscaled target shows
    joint = small_dm(cache_dir, targets=targets, name="joint2", standardize=True)
    dm = small_dm(
        cache_dir, targets=targets, name="joint2", standardize=True, channel_independent=True, loader="stock"
    )
    for d in (joint, dm):
        d.prepare_data()
        d.setup()
    assert dm.model_targets == ["value"] and dm.datasets["train"].target == "value"
    assert "channel" in dm.datasets["train"].static_categoricals
    for split in ("train", "val"):  # one channel window per joint window and target
        assert len(dm.datasets[split]) == len(targets) * len(joint.datasets[split])
    host = joint.frame[joint.frame["series"] == "host00"].set_index("time_idx")
    melted = dm.frame[dm.frame["series"] == "host00/load_average"].set_index("time_idx")
    assert melted["value"].equals(host["load_average"]) and (melted["channel"] == "load_average").all()
    assert dm.cutoffs["val"]["host00/memory_percent"] == joint.cutoffs["val"]["host00"]

    model = small_module(dm)
    full = score(model, dm, "val")
    scored = full["metrics"]
    for name in targets:
        assert scored[f"{name}/tft/mse"] >= 0 and f"{name}/snaive/mae" in scored
    # The overall score is the mean over channels (each has the same windows).
    assert scored["all/tft/mse"] == pytest.approx(
        np.mean([scored[f"{t}/tft/mse"] for t in targets]), rel=1e-5
    )
    # The walk-forward backtest breaks down by channel too, each origin scored on that channel's windows.
    summary, table = backtest(model, dm, "val", full, cutoffs=2)
    assert len(table) == 2
    first = dm.datasets["val"].decoded_index["time_idx_first_prediction"].to_numpy()[: full["result"]["n"]]
    for row in table:
        for label in ("tft", "snaive"):
            per_channel = [row[f"{t}/{label}/mae"] for t in targets]
            assert row[f"value/{label}/mae"] == pytest.approx(np.mean(per_channel), rel=1e-5)
        for name in targets:  # recomputed from the scored windows of that origin and channel
            sel = full["valid"].numpy() & (first == row["time_idx"]) & (np.array(full["channels"]) == name)
            q = full["result"]["quantiles"][0][torch.as_tensor(sel)]
            actual = full["result"]["actual"][0][torch.as_tensor(sel)]
            assert row[f"{name}/tft/mae"] == pytest.approx(
                float((model.point_of(q) - actual).abs().mean()), rel=1e-5
            )
    for name in targets:
        assert summary[f"backtest/{name}/rel_mae_vs_snaive"] == pytest.approx(
            summary[f"backtest/{name}/tft/mae"] / summary[f"backtest/{name}/snaive/mae"]
        )

    loaded = TFTModule.from_export(model.export(tmp_path / "export", dm))
    raw = dm.raw_frame()
    recent = raw[raw["series"] == "host01"].tail(40)
    fc = forecast(loaded, recent)
    assert set(fc["series"]) == {"host01"} and set(fc["target"]) == set(targets)
    assert len(fc) == len(targets) * loaded.prediction_length
    # Original scale, right target: each forecast sits near its own target's recent level.
    for name in targets:
        level = recent[name].mean()
        assert abs(fc.loc[fc["target"] == name, "q0.5"].mean() - level) < 0.3 * level


def test_channel_independent_refuses_lags(cache_dir):
    from tests.tft.conftest import small_dm
    from zoo.core.errors import ZooError

    with pytest.raises(ZooError, match="data.channel_independent=true forecasts each target alone"):
        small_dm(cache_dir, channel_independent=True, lags=[1], loader="stock")


def test_quantile_mean_is_the_mean_of_the_forecast_distribution():
    from zoo.tft.evaluate import quantile_mean

    levels = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]
    normal = torch.distributions.Normal(3.0, 2.0)
    q = normal.icdf(torch.tensor(levels))
    assert float(quantile_mean(q, levels)) == pytest.approx(3.0, abs=1e-5)  # symmetric: the median
    # A right-skewed distribution (exponential, rate 1): mean 1 above its median ln 2; the midpoint rule
    # over 7 quantiles lands near the mean, not the median.
    expo = torch.distributions.Exponential(1.0)
    q = expo.icdf(torch.tensor(levels))[None, None]
    m = float(quantile_mean(q, levels))
    assert abs(m - 1.0) < 0.15 and m - float(q[..., 3]) > 0.2


@pytest.mark.parametrize("dm_name", ["multi_dm", "single_dm"])
def test_point_loss_weight_adds_the_mse_of_the_point_forecast(dm_name, request):
    """model.point_loss_weight adds weight x MSE(point forecast, actual) (summed over targets) to the
    quantile loss; model.point picks the median or the quantiles' mean as that point."""
    from zoo.tft.evaluate import quantile_mean

    dm = request.getfixturevalue(dm_name)
    x, y = dm.batches("train").__getitems__(list(range(8)))
    plain = small_module(dm).eval()
    out = plain(x)
    actual = y[0] if plain.multi_target else [y[0]]
    quantiles = plain.quantile_forecast(out)
    for point, expect in (
        ("median", [q[..., 3] for q in quantiles]),
        ("mean", [quantile_mean(q, plain.quantiles) for q in quantiles]),
    ):
        weighted = small_module(dm, point=point, point_loss_weight=0.5).eval()
        assert weighted.hparams.point == point and weighted.hparams.point_loss_weight == 0.5
        for a, b in zip(weighted.point_forecast(out), expect):
            torch.testing.assert_close(a, b)
        mse = sum(((p - a) ** 2).mean() for p, a in zip(expect, actual))
        torch.testing.assert_close(weighted._loss(x, y, out), plain._loss(x, y, out) + 0.5 * mse)
    # The gradient now pulls the point forecast towards the actual values (a step lowers its MSE).
    model = small_module(dm, point="mean", point_loss_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def point_mse():
        with torch.no_grad():
            return float(sum(((p - a) ** 2).mean() for p, a in zip(model.point_forecast(model(x)), actual)))

    model.eval()  # no dropout noise between the measurements
    before = point_mse()
    for _ in range(3):
        opt.zero_grad()
        model._loss(x, y, model(x)).backward()
        opt.step()
    assert point_mse() < before


def test_point_settings_are_checked(multi_dm):
    from zoo.core.errors import ZooError

    with pytest.raises(ZooError, match="model.point='mode' must be 'median' or 'mean'"):
        TFTModule(**multi_dm.model_kwargs(), point="mode")
    with pytest.raises(ZooError, match="model.point_loss_weight=-1.0 must be >= 0"):
        TFTModule(**multi_dm.model_kwargs(), point_loss_weight=-1.0)


def test_point_keys_flow_from_the_config(compose):
    cfg = compose("model=tft", "trainer=cpu", "data.synthetic.days=6", "data.num_workers=0")
    assert cfg.model.point == "median" and cfg.model.point_loss_weight == 0.0  # documented defaults
    cfg = compose(
        "model=tft",
        "trainer=cpu",
        "data.synthetic.days=6",
        "data.num_workers=0",
        "model.point=mean",
        "model.point_loss_weight=0.5",
    )
    _, model, _ = build(cfg)
    assert model.point == "mean" and model.point_loss_weight == 0.5
