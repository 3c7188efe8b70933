"""The ops baselines against references: numpy's polyfit for the least-squares trend, a worked Holt example
(and the recursion written out as a plain loop), and their place in every eval and backtest table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.tft import baselines as B


def test_linear_trend_is_numpys_least_squares_line():
    rng = np.random.default_rng(0)
    history = rng.normal(50, 10, (5, 37)) + np.arange(37) * rng.normal(0, 1, (5, 1))
    got = B.linear_trend(torch.tensor(history, dtype=torch.float64), 6).numpy()
    for i in range(5):
        slope, intercept = np.polyfit(np.arange(37), history[i], 1)
        np.testing.assert_allclose(got[i], intercept + slope * np.arange(37, 43), rtol=1e-10)


def test_linear_trend_extends_an_exact_line():
    history = torch.tensor([[3.0, 5.0, 7.0, 9.0]])
    assert B.linear_trend(history, 3).tolist() == [[11.0, 13.0, 15.0]]


def test_holt_worked_example():
    """alpha=0.5, beta=0.5 on 1, 3, 4: s0=1, b0=2; s1=0.5*3+0.5*(1+2)=3, b1=0.5*2+0.5*2=2;
    s2=0.5*4+0.5*(3+2)=4.5, b2=0.5*1.5+0.5*2=1.75; forecasts 6.25, 8.0."""
    got = B.holt(torch.tensor([[1.0, 3.0, 4.0]]), 2, alpha=0.5, beta=0.5)
    assert got.tolist() == [[6.25, 8.0]]


def test_holt_matches_the_recursion_per_window():
    rng = np.random.default_rng(1)
    history = rng.normal(0, 1, (4, 50)).cumsum(1)
    got = B.holt(torch.tensor(history), 5).numpy()
    for i in range(4):
        y = history[i]
        s, b = y[0], y[1] - y[0]
        for v in y[1:]:
            s, prev = B.HOLT_ALPHA * v + (1 - B.HOLT_ALPHA) * (s + b), s
            b = B.HOLT_BETA * (s - prev) + (1 - B.HOLT_BETA) * b
        np.testing.assert_allclose(got[i], s + b * np.arange(1, 6), rtol=1e-10)


def test_from_history_gathers_each_windows_encoder_rows_in_chunks(monkeypatch):
    monkeypatch.setattr(B, "CHUNK", 3)
    values = torch.arange(100, dtype=torch.float32) ** 1.5
    first = torch.tensor([0, 10, 20, 50, 70, 90])
    out = B.from_history(values, first, 8, 4)
    for k, f in enumerate(first.tolist()):
        h = values[f : f + 8][None]
        torch.testing.assert_close(out["linear"][k], B.linear_trend(h, 4)[0])
        torch.testing.assert_close(out["holt"][k], B.holt(h, 4)[0])


def test_verdict_names_the_best_baseline_and_says_when_the_model_loses():
    metrics = {"cpu/tft/mae": 2.0, "cpu/naive/mae": 1.5, "cpu/snaive/mae": 2.6, "cpu/linear/mae": 1.9,
               "cpu/holt/mae": 1.7, "mem/tft/mae": 1.0, "mem/naive/mae": 1.2, "mem/snaive/mae": 3.0,
               "mem/linear/mae": 1.1, "mem/holt/mae": 1.3}  # fmt: skip
    table = B.verdicts(metrics, ["cpu", "mem"])
    assert table["cpu"]["best_baseline"] == "naive" and not table["cpu"]["beats_best"]
    assert table["cpu"]["rel_mae_vs_best"] == pytest.approx(2.0 / 1.5)
    assert table["mem"]["best_baseline"] == "linear" and table["mem"]["beats_best"]
    lines = B.verdict_lines(table)
    assert "does NOT beat it" in lines[0] and "naive" in lines[0] and "beats it" in lines[1]


def test_every_baseline_is_scored_and_backtested(multi_dm):
    from zoo.tft.evaluate import backtest, score
    from zoo.tft.module import TFTModule

    torch.manual_seed(0)
    model = TFTModule(**multi_dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4})  # fmt: skip
    scored = score(model, multi_dm, "val", rolling=False)
    m = scored["metrics"]
    for name in multi_dm.targets:
        for b in B.NAMES:
            assert np.isfinite(m[f"{name}/{b}/mae"])
        best = min(B.NAMES, key=lambda b: m[f"{name}/{b}/mae"])
        assert scored["verdicts"][name]["best_baseline"] == best
        assert m[f"{name}/tft/rel_mae_vs_best"] == pytest.approx(
            m[f"{name}/tft/mae"] / m[f"{name}/{best}/mae"]
        )
    # the scored linear forecast of window 0 is the polyfit line through its encoder rows
    arrays = multi_dm.series_arrays("val")
    row = int(scored["rows"][0])
    y = arrays["targets"][0][row : row + multi_dm.encoder_length].double().numpy()
    slope, intercept = np.polyfit(np.arange(len(y)), y, 1)
    want = intercept + slope * np.arange(len(y), len(y) + multi_dm.prediction_length)
    np.testing.assert_allclose(scored["baselines"]["linear"][0][0].numpy(), want, rtol=1e-4)
    summary, table = backtest(model, multi_dm, "val", scored, 2)
    assert all(f"{t}/{b}/mae" in table[0] for t in multi_dm.targets for b in B.NAMES)
    assert all(f"backtest/{t}/rel_mae_vs_best" in summary for t in multi_dm.targets)
