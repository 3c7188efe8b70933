"""Band calibration (zoo.tft.calibrate): it brings an overconfident model's coverage to nominal without
raising pinball loss, keeps quantiles monotone and the median fixed, and rides in checkpoints (loaded
with weights_only) and exports into forecast()."""

from __future__ import annotations

import pytest
import torch

from zoo.core.errors import ZooError
from zoo.tft.calibrate import (
    Calibration,
    adapted,
    coverage,
    fit,
    non_crossing,
    pinball,
    rolling_apply,
    rolling_calibrated,
    scaled_residuals,
)

LEVELS = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]


def gaussian_windows(n: int, P: int, true_sd: float, model_sd: float, seed: int, scale_spread: float = 1.0):
    """Windows whose actual ~ N(mu, (s * true_sd)^2) and a model predicting N(mu, (s * model_sd)^2): each
    window has its own scale s (hosts of different sizes), the model is only wrong about the spread."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, P, generator=g) * 10
    s = torch.exp(torch.rand(n, 1, generator=g) * scale_spread)
    z = torch.distributions.Normal(0, 1).icdf(torch.tensor(LEVELS))
    q = mu[..., None] + s[..., None] * model_sd * z
    y = mu + s * true_sd * torch.randn(n, P, generator=g)
    return q, y


def test_overconfident_bands_reach_nominal_coverage_and_lower_pinball():
    q_val, y_val = gaussian_windows(4000, 4, true_sd=2.0, model_sd=1.0, seed=0, scale_spread=2.0)
    q_test, y_test = gaussian_windows(4000, 4, true_sd=2.0, model_sd=1.0, seed=1, scale_spread=2.0)
    cal = fit([q_val], [y_val], LEVELS, ["cpu"])
    q_cal = cal.apply(q_test, "cpu")
    raw80, cal80 = coverage(q_test, y_test, LEVELS, 0.1, 0.9), coverage(q_cal, y_test, LEVELS, 0.1, 0.9)
    raw96, cal96 = coverage(q_test, y_test, LEVELS, 0.02, 0.98), coverage(q_cal, y_test, LEVELS, 0.02, 0.98)
    assert raw80 < 0.55 and raw96 < 0.75  # the case is overconfident indeed
    assert abs(cal80 - 0.80) < 0.02 and abs(cal96 - 0.96) < 0.015, (cal80, cal96)
    assert pinball(q_cal, y_test, LEVELS) < 0.95 * pinball(q_test, y_test, LEVELS)
    assert torch.equal(q_cal[..., 3], q_test[..., 3])  # the median (the point forecast) is untouched
    assert (q_cal.diff(dim=-1) >= 0).all()
    # Each horizon has its own row: a horizon with wider errors gets a wider band.
    q2, y2 = q_val.clone(), y_val.clone()
    y2[:, 3] = q2[:, 3, 3] + 3 * (y2[:, 3] - q2[:, 3, 3])
    wide = fit([q2], [y2], LEVELS, ["cpu"])
    assert wide.shift[0, 3, -1] > 2 * wide.shift[0, 0, -1] > 0


def test_underconfident_bands_shrink():
    q_val, y_val = gaussian_windows(3000, 2, true_sd=0.5, model_sd=1.0, seed=2)
    q_test, y_test = gaussian_windows(3000, 2, true_sd=0.5, model_sd=1.0, seed=3)
    q_cal = fit([q_val], [y_val], LEVELS, ["cpu"]).apply(q_test, "cpu")
    assert coverage(q_test, y_test, LEVELS, 0.1, 0.9) > 0.95
    assert abs(coverage(q_cal, y_test, LEVELS, 0.1, 0.9) - 0.80) < 0.03
    assert pinball(q_cal, y_test, LEVELS) < pinball(q_test, y_test, LEVELS)


def test_non_crossing_keeps_the_median_and_order():
    q = torch.tensor([[1.0, 3.0, 2.0, 2.5, 2.0, 4.0, 3.5]])
    out = non_crossing(q, 3)
    assert out[0, 3] == 2.5 and (out.diff(dim=-1) >= 0).all()
    assert out.tolist() == [[1.0, 2.0, 2.0, 2.5, 2.5, 4.0, 4.0]]
    # A table that would push P25 above the median (a huge shift) still yields monotone quantiles.
    cal = Calibration(LEVELS, ["cpu"], torch.zeros(1, 1, 7), torch.zeros(1, 1))
    cal.shift[0, 0, 2] = 5.0
    qq = torch.tensor([[[-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]]])
    got = cal.apply(qq, "cpu")
    assert (got.diff(dim=-1) >= 0).all() and got[0, 0, 3] == 0.0


def test_channel_rows_calibrate_each_channel():
    qa, ya = gaussian_windows(2000, 2, true_sd=1.0, model_sd=1.0, seed=4)
    qb, yb = gaussian_windows(2000, 2, true_sd=3.0, model_sd=1.0, seed=5)
    channels = ["a"] * 2000 + ["b"] * 2000
    cal = fit([torch.cat([qa, qb])], [torch.cat([ya, yb])], LEVELS, ["value"], channels)
    assert cal.keys == ["value", "a", "b"]
    qa2, ya2 = gaussian_windows(2000, 2, true_sd=1.0, model_sd=1.0, seed=6)
    qb2, yb2 = gaussian_windows(2000, 2, true_sd=3.0, model_sd=1.0, seed=7)
    out = cal.apply(torch.cat([qa2, qb2]), "value", ["a"] * 2000 + ["b"] * 2000)
    for sl, y in ((slice(0, 2000), ya2), (slice(2000, 4000), yb2)):
        assert abs(coverage(out[sl], y, LEVELS, 0.1, 0.9) - 0.80) < 0.035
    # Unknown channel: the pooled row.
    assert torch.equal(cal.apply(qa2, "value", ["zz"] * 2000), cal.apply(qa2, "value"))


def test_state_round_trip_and_mismatch_errors(tmp_path):
    q, y = gaussian_windows(200, 3, 2.0, 1.0, seed=8)
    cal = fit([q, q], [y, y], LEVELS, ["cpu", "mem"])
    path = tmp_path / "c.pt"
    torch.save({"tft_calibration": cal.to_state()}, path)
    back = Calibration.from_state(torch.load(path, weights_only=True)["tft_calibration"])
    assert torch.equal(back.shift, cal.shift) and back.keys == ["cpu", "mem"] and back.windows == 200
    cal.save_json(tmp_path)
    again = Calibration.load_json(tmp_path)
    assert torch.allclose(again.shift, cal.shift) and again.levels == LEVELS
    with pytest.raises(ZooError, match="horizon 3 differs"):
        cal.check(LEVELS, ["cpu", "mem"], 6, "x")
    with pytest.raises(ZooError, match="targets"):
        cal.check(LEVELS, ["cpu", "disk"], 3, "x")
    with pytest.raises(ZooError, match="not a scaled-conformal-shift"):
        Calibration.from_state({"method": "other"})


def drifting_windows(n: int, P: int, sds: list[float], seed: int):
    """One series forecast at origins 0..n-1 whose actual spread steps through `sds` (equal parts of the
    time), by a model that always predicts spread 1."""
    q, y = gaussian_windows(n, P, true_sd=1.0, model_sd=1.0, seed=seed, scale_spread=0.0)
    mu = q[..., LEVELS.index(0.5)]
    sd = torch.tensor(sds).repeat_interleave(n // len(sds))[:, None]
    return q, mu + (y - mu) * sd, torch.arange(n)


def walk_forward_case(P: int, n_val: int, n: int, sds: list[float], seeds: tuple[int, int]):
    """Validation windows at spread 1, then `n` later windows whose spread steps through `sds`, with the
    table fitted on the validation ones and their scaled residuals (the walk-forward seed)."""
    q_val, y_val, o_val = drifting_windows(n_val, P, [1.0], seed=seeds[0])
    q, y, o = drifting_windows(n, P, sds, seed=seeds[1])
    cal = fit([q_val], [y_val], LEVELS, ["cpu"])
    seed = scaled_residuals(q_val, y_val, LEVELS, cal.floor[0])
    return cal, seed, o_val, q, y, o + n_val + P  # the later windows come after the validation ones


def test_rolling_calibration_follows_a_change_the_static_table_misses():
    cal, seed, o_val, q, y, o = walk_forward_case(4, 1000, 6000, [1.0, 2.5], (10, 11))
    static = cal.apply(q, "cpu")
    rolled = rolling_apply(cal, 0, q, y, o, seed, o_val, window=500, every=1)
    late = slice(4000, 6000)  # well after the change, once the window holds only the new regime
    assert coverage(static[late], y[late], LEVELS, 0.1, 0.9) < 0.5
    assert abs(coverage(rolled[late], y[late], LEVELS, 0.1, 0.9) - 0.80) < 0.03
    assert abs(coverage(rolled[late], y[late], LEVELS, 0.02, 0.98) - 0.96) < 0.02
    assert pinball(rolled, y, LEVELS) < pinball(static, y, LEVELS)
    early = slice(0, 2500)  # the unchanged regime: as good as the static table
    assert abs(coverage(rolled[early], y[early], LEVELS, 0.1, 0.9) - 0.80) < 0.03
    assert torch.equal(rolled[..., 3], q[..., 3]) and (rolled.diff(dim=-1) >= 0).all()


def test_adaptive_levels_reach_nominal_where_the_window_lags():
    """A lasting change the window cannot absorb in time (it still holds the validation windows): the
    plain rolling window stays overconfident; moving the levels at each refit gets the coverage back."""
    cal, seed, o_val, q, y, o = walk_forward_case(8, 1000, 1500, [1.6], (20, 21))
    plain = rolling_apply(cal, 0, q, y, o, seed, o_val, window=5000, rate=0.0)
    adaptive = rolling_apply(cal, 0, q, y, o, seed, o_val, window=5000)  # ADAPT_RATE
    assert coverage(plain, y, LEVELS, 0.1, 0.9) < 0.70 and coverage(plain, y, LEVELS, 0.02, 0.98) < 0.91
    assert abs(coverage(adaptive, y, LEVELS, 0.1, 0.9) - 0.80) < 0.02
    assert abs(coverage(adaptive, y, LEVELS, 0.02, 0.98) - 0.96) < 0.015
    assert pinball(adaptive, y, LEVELS) < pinball(plain, y, LEVELS)
    assert torch.equal(adaptive[..., 3], q[..., 3]) and (adaptive.diff(dim=-1) >= 0).all()


def test_adapted_levels_move_by_the_coverage_error_and_stay_in_range():
    tau = torch.tensor(LEVELS)
    level = tau.expand(2, 7).clone()
    below = torch.zeros(5, 2, 7, dtype=torch.bool)  # every actual above every quantile: all levels rise
    up = adapted(level, tau, below, 0.05)
    assert (up[:, [0, 1, 2, 4, 5, 6]] > level[:, [0, 1, 2, 4, 5, 6]]).all() and (up[:, 3] == 0.5).all()
    # P10/P90 move by rate * error; the tails' steps shrink with their Bernoulli variance.
    assert torch.allclose(up[:, 5], torch.full((2,), 0.9 + 0.05 * 0.9))
    assert ((up[:, 6] - 0.98) < 0.05 * 0.98 * 0.25).all()
    assert torch.equal(adapted(level, tau, below, 0.0), level)
    many = level
    for _ in range(200):
        many = adapted(many, tau, below, 0.05)
    assert (many <= 1).all() and (many[:, 6] == 1).all()
    back = adapted(many, tau, torch.ones(5, 2, 7, dtype=torch.bool), 0.05)  # now every actual below
    assert (back[:, 6] < 1).all()
    table = fit([torch.zeros(4, 2, 7) + tau], [torch.zeros(4, 2)], LEVELS, ["cpu"])
    table.adapt("cpu", below)
    assert torch.allclose(table.level[0], up) and torch.equal(
        Calibration.from_state(table.to_state()).level, table.level
    )


def test_rolling_calibration_uses_only_the_past():
    P = 4
    cal, seed, o_val, q, y, o = walk_forward_case(P, 200, 400, [1.0], (12, 13))
    before = rolling_apply(cal, 0, q, y, o, seed, o_val, window=100, every=1)
    j = 150
    y2 = y.clone()
    y2[j] += 1000.0  # a huge miss at window j: known only once its horizon has passed
    after = rolling_apply(cal, 0, q, y2, o, seed, o_val, window=100, every=1)
    unseen = o < o[j] + P
    assert torch.equal(before[unseen], after[unseen])
    assert not torch.equal(before[~unseen], after[~unseen])
    # Shuffled input order gives the same bands window for window.
    perm = torch.randperm(len(o), generator=torch.Generator().manual_seed(0))
    shuffled = rolling_apply(cal, 0, q[perm], y[perm], o[perm], seed, o_val, window=100, every=1)
    assert torch.allclose(shuffled, before[perm])


def test_rolling_calibrated_keeps_each_channel_to_its_own_row():
    P = 2
    qa, ya, oa = drifting_windows(1000, P, [1.0], seed=14)
    qb, yb, ob = drifting_windows(1000, P, [3.0], seed=15)
    names = ["a"] * 1000 + ["b"] * 1000
    val = {"quantiles": [torch.cat([qa, qb])], "actual": [torch.cat([ya, yb])], "origin": torch.cat([oa, ob]),
           "channels": names}  # fmt: skip
    cal = fit(val["quantiles"], val["actual"], LEVELS, ["value"], names)
    qa2, ya2, oa2 = drifting_windows(1000, P, [1.0], seed=16)
    qb2, yb2, ob2 = drifting_windows(1000, P, [3.0], seed=17)
    split = {"quantiles": [torch.cat([qa2, qb2])], "actual": [torch.cat([ya2, yb2])],
             "origin": torch.cat([oa2, ob2]) + 1000 + P, "channels": names}  # fmt: skip
    (out,) = rolling_calibrated(cal, split, val, ["value"], window=300)
    for sl, y in ((slice(0, 1000), ya2), (slice(1000, 2000), yb2)):
        assert abs(coverage(out[sl], y, LEVELS, 0.1, 0.9) - 0.80) < 0.04


@pytest.mark.slow
def test_fit_end_calibrates_checkpoints_export_eval_and_forecast(tmp_path, cache_dir):
    """After fit the module, its best/last checkpoints and its export carry the table; eval reports
    before/after coverage; forecast() returns calibrated, monotone quantiles and the raw point."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.tft.conftest import small_dm
    from zoo.core.export import export_run
    from zoo.core.family import load_run
    from zoo.tft.evaluate import score
    from zoo.tft.module import TFTModule
    from zoo.tft.predict import forecast

    dm = small_dm(cache_dir, name="calib")
    dm.prepare_data()
    dm.setup()
    pl.seed_everything(0)
    model = TFTModule(**dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4},
                      plots=False)  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val/loss", save_top_k=1, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, limit_train_batches=2, limit_val_batches=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[ckpt],
                         num_sanity_val_steps=0, use_distributed_sampler=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.calibration is not None and model.calibration.keys == model.target_names
    for path in (ckpt.best_model_path, ckpt.last_model_path):
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state = raw["tft_calibration"]
        assert isinstance(state["shift"], torch.Tensor) and state["shift"].shape[1] == model.prediction_length
    # (zoo.train checkpoints also load through zoo.core.family.load_run, which calls the same hook)
    loaded = TFTModule.load_from_checkpoint(ckpt.last_model_path, map_location="cpu", weights_only=True)
    assert torch.equal(loaded.calibration.shift, model.calibration.shift)

    m = score(model, dm, "val")["metrics"]
    for t in model.target_names:
        for key in ("coverage_p10_p90", "coverage_p2_p98", "pinball"):
            assert f"{t}/tft/{key}" in m and f"{t}/tft/{key}_raw" in m
    assert m["calibrated"] == 1.0
    # Fitted on these very windows: the calibrated P10-P90 band covers about 80 % of them per target.
    assert all(abs(m[f"{t}/tft/coverage_p10_p90"] - 0.8) < 0.1 for t in model.target_names), m

    folder = export_run(model, tmp_path / "export", {})
    assert (folder / "calibration.json").is_file()
    exported = load_run(folder).module
    assert torch.allclose(exported.calibration.shift, model.calibration.shift)
    recent = dm.raw_frame().groupby("series").tail(48)
    fc = forecast(exported, recent)
    qcols = [f"q{level:g}" for level in exported.quantiles]
    assert (fc[qcols].diff(axis=1).iloc[:, 1:] >= -1e-6).all().all()
    table, exported.calibration = exported.calibration, None
    plain = forecast(exported, recent)
    exported.calibration = table
    assert ((fc["q0.98"] - fc["q0.02"]) != (plain["q0.98"] - plain["q0.02"])).any()
    assert (fc["q0.5"] - plain["q0.5"]).abs().max() < 1e-5 and (
        fc["point"] - plain["point"]
    ).abs().max() < 1e-5


@pytest.mark.parametrize("split", ["test", "val"])
def test_eval_without_a_table_fits_it_from_one_prediction_of_the_validation_split(tmp_path, cache_dir, split):
    """A checkpoint that carries no table: evaluate_module fits one on the validation windows and seeds
    the walk-forward bands (or, for split=val, the scores) with the same prediction: the validation
    split is predicted once."""
    from tests.tft.conftest import small_dm
    from zoo.tft.calibrate import fit_module
    from zoo.tft.evaluate import evaluate_module
    from zoo.tft.module import TFTModule

    dm = small_dm(cache_dir, name="calib_test", test_fraction=0.25, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(0)
    model = TFTModule(**dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4},
                      plots=False).eval()  # fmt: skip
    assert model.calibration is None
    made: dict[int, str] = {}  # id of each batches object -> its split
    predicted: list[str] = []
    batches, predict = dm.batches, model.predict_batches

    def batches_of(name, *a, **kw):
        out = batches(name, *a, **kw)
        made[id(out)] = name
        return out

    dm.batches = batches_of
    model.predict_batches = lambda b, *a, **kw: predicted.append(made[id(b)]) or predict(b, *a, **kw)
    metrics = evaluate_module(model, dm, split, tmp_path / "eval", backtest_cutoffs=0)
    assert predicted == (["val", "test"] if split == "test" else ["val"]), predicted
    assert model.calibration is not None and metrics["calibrated"] == 1.0
    assert any(k.endswith("coverage_p10_p90_rolling") for k in metrics) == (split == "test")
    dm.batches = batches
    del model.predict_batches
    assert torch.equal(fit_module(model, dm, "val").shift, model.calibration.shift)


def test_hindsight_table_covers_nominally_on_the_scored_windows_per_channel():
    from types import SimpleNamespace

    from benchmarks.tft import hindsight

    levels = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]
    g = torch.Generator().manual_seed(0)
    N, P = 400, 3
    actual = torch.randn(N, P, generator=g)
    actual[N // 2 :] *= 3  # channel b's errors are 3x the model's band: raw covers far too little
    z = torch.tensor([-2.054, -1.2816, -0.6745, 0.0, 0.6745, 1.2816, 2.054])
    q = z.expand(N, P, -1).clone()
    channels = ["a"] * (N // 2) + ["b"] * (N // 2)
    valid = torch.ones(N, dtype=torch.bool)
    valid[:10] = False  # windows without a seasonal history are not scored
    scored = {"result": {"quantiles": [q], "actual": [actual]}, "valid": valid, "channels": channels}
    module = SimpleNamespace(quantiles=levels, target_names=["value"])
    out = hindsight(module, scored, ["a", "b"])
    for c in ("a", "b"):
        assert abs(out[f"{c}/tft/coverage_p10_p90_hindsight"] - 0.8) < 0.02, out
        assert abs(out[f"{c}/tft/coverage_p2_p98_hindsight"] - 0.96) < 0.02, out
    b = torch.arange(N) >= N // 2
    assert out["b/tft/pinball_hindsight"] < pinball(q[b], actual[b], levels) * 0.9


# -- reference checks of the hand-written math -------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 50, 333])
def test_conformal_order_statistics_equal_torch_quantile(n):
    """`_order_statistics` against torch.quantile. The split-conformal bound of level tau (Lei et al. 2018)
    is the k-th smallest residual, k = ceil((n+1) tau) above the median and floor((n+1) tau) below it,
    clamped to [1, n]. torch.quantile at q reads position q (n-1) of the sorted sample; 'higher' rounds it
    up and 'lower' down, so q = (k-1.5)/(n-1) with 'higher' and q = (k-0.5)/(n-1) with 'lower' both land
    on index k-1 with half a position of margin against float rounding."""
    import math

    from zoo.tft.calibrate import _order_statistics

    g = torch.Generator().manual_seed(n)
    r = torch.randn(n, 3, dtype=torch.float64, generator=g)
    r[:, 2] = r[:, 2].round(decimals=1)  # ties
    for tau in [0.001, 0.02, 0.1, 0.25, 0.49, 0.51, 0.75, 0.9, 0.98, 0.999]:
        k = math.ceil((n + 1) * tau) if tau > 0.5 else math.floor((n + 1) * tau)
        k = min(max(k, 1), n)
        got = _order_statistics(r, torch.full((3,), tau, dtype=torch.float64))
        if n == 1:
            assert torch.equal(got, r[0])
            continue
        higher = (
            torch.quantile(r, (k - 1.5) / (n - 1), dim=0, interpolation="higher")
            if k > 1
            else r.min(0).values
        )
        lower = torch.quantile(r, min(k - 0.5, n - 1) / (n - 1), dim=0, interpolation="lower")
        assert torch.equal(got, higher) and torch.equal(got, lower), (n, tau, k)


def test_adaptive_update_follows_the_published_formula_on_a_worked_example():
    """Adaptive conformal inference (Gibbs & Candes 2021, eq. 2: alpha_{t+1} = alpha_t + gamma (alpha -
    err_t)) written for a quantile level: level' = level + gamma_tau (tau - share of actuals at or below the
    calibrated quantile), gamma_tau = rate * min(1, tau (1 - tau) / 0.09), clipped to [0, 1], the median
    fixed. The numbers below are worked by hand from that formula (rate 0.05, 4 matured windows)."""
    tau = torch.tensor([0.02, 0.1, 0.5, 0.9, 0.98])
    level = torch.tensor([[0.02, 0.1, 0.5, 0.9, 0.98], [0.001, 0.1, 0.5, 0.9, 0.999]])
    # below[window, horizon, level]: horizon 0 has 1, 2, -, 3, 4 of 4 actuals below; horizon 1 all 4 below.
    below = torch.zeros(4, 2, 5, dtype=torch.bool)
    below[:1, 0, 0] = below[:2, 0, 1] = below[:3, 0, 3] = below[:, 0, 4] = True
    below[:, 1] = True
    tail = 0.05 * (0.02 * 0.98 / 0.09)  # 0.0108889: the tails' smaller step
    expected = torch.tensor(
        [
            [0.02 + tail * (0.02 - 0.25), 0.1 + 0.05 * (0.1 - 0.5), 0.5, 0.9 + 0.05 * (0.9 - 0.75), 0.98 + tail * (0.98 - 1)],
            [0.0, 0.1 + 0.05 * (0.1 - 1), 0.5, 0.9 + 0.05 * (0.9 - 1), 0.999 + tail * (0.98 - 1)],
        ]
    )  # fmt: skip
    assert torch.allclose(expected[0], torch.tensor([0.0174956, 0.08, 0.5, 0.9075, 0.9797822]), atol=1e-7)
    assert torch.allclose(adapted(level, tau, below, 0.05), expected, atol=1e-7)
