"""Calibration in bounded memory: beyond `MAX_WINDOWS` the table is fitted on a seeded uniform sample of
the validation windows (only those are predicted); below it, on all of them as before."""

from __future__ import annotations

import torch

from zoo.tft import calibrate as C


def tiny_model(dm):
    from zoo.tft.module import TFTModule

    torch.manual_seed(0)
    return TFTModule(**dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4})  # fmt: skip


def test_under_the_cap_the_fit_uses_every_window_as_before(multi_dm):
    model = tiny_model(multi_dm)
    full = model.predict_batches(multi_dm.batches("val"))
    before = C.fit(full["quantiles"], full["actual"], model.quantiles, model.target_names)
    after = C.fit_module(model, multi_dm, "val")
    assert after.windows == before.windows == len(multi_dm.batches("val"))
    torch.testing.assert_close(after.shift, before.shift)
    torch.testing.assert_close(after.floor, before.floor)


def test_over_the_cap_only_a_sample_is_predicted_and_coverage_holds(multi_dm, monkeypatch):
    model = tiny_model(multi_dm)
    batches = multi_dm.batches("val")
    n = len(batches)
    cap = n // 3
    seen = []
    original = model.predict_batches

    def counting(b, *args, **kw):
        seen.append(len(b))
        return original(b, *args, **kw)

    monkeypatch.setattr(model, "predict_batches", counting)
    capped = C.fit_module(model, multi_dm, "val", max_windows=cap)
    assert seen == [cap] and capped.windows == cap
    chosen = C.sample_windows(n, cap)
    assert chosen == sorted(set(chosen)) and len(chosen) == cap and chosen != list(range(cap))
    assert C.sample_windows(n, cap) == chosen  # seeded: the same sample every time
    # The sample's table covers the whole split about as the full table does (nominal 80 % and 96 %).
    full = original(batches)
    table = C.fit(full["quantiles"], full["actual"], model.quantiles, model.target_names)
    for t, name in enumerate(model.target_names):
        q, y = full["quantiles"][t], full["actual"][t]
        for lo, hi in ((0.1, 0.9), (0.02, 0.98)):
            a = C.coverage(capped.apply(q, name), y, model.quantiles, lo, hi)
            b = C.coverage(table.apply(q, name), y, model.quantiles, lo, hi)
            assert abs(a - b) <= 0.06, (name, lo, a, b)
