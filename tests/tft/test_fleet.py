"""Fleet-sized data: the memory savings must not change a single window or batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.tft.test_loader import assert_same
from zoo.tft.datamodule import WindowBatches


def full_history_eval_dataset(dm, split):
    """The evaluation dataset as it was built before: over every row of each series up to the split end."""
    from pytorch_forecasting import TimeSeriesDataSet

    prev = dm.cutoffs["train" if split == "val" else "val"]
    end = dm.cutoffs[split]
    frame = dm.frame[dm.frame["time_idx"] <= dm.frame["series"].map(end)]
    ds = TimeSeriesDataSet.from_dataset(
        dm.datasets["train"], frame, stop_randomization=True, min_prediction_idx=int(min(prev.values())) + 1
    )
    index = ds.decoded_index
    first = index["time_idx_first_prediction"].to_numpy()
    origin = index["series"].map(prev).to_numpy()
    mask = (first > origin) & ((first - origin - 1) % dm.eval_stride == 0)
    return ds.filter(lambda _: mask)


def test_eval_dataset_over_the_lookback_only_keeps_every_window(multi_dm):
    """A lookback shorter than the encoder would lose windows (or change their rows) here."""
    old = full_history_eval_dataset(multi_dm, "val")
    new = multi_dm.datasets["val"]
    assert len(new) == len(old) > 0
    cols = ["series", "time_idx_first_prediction"]
    assert (
        new.decoded_index[cols].reset_index(drop=True).equals(old.decoded_index[cols].reset_index(drop=True))
    )
    idx = list(range(len(new)))
    assert_same(WindowBatches(old).__getitems__(idx), WindowBatches(new).__getitems__(idx))


def test_eval_dataset_keeps_the_seasonal_baseline_history(multi_dm):
    """zoo.tft.evaluate scores seasonal-naive only where a season of history lies in the same series."""
    from zoo.tft import sources as S

    new = multi_dm.datasets["val"]
    lag = S.seasonal_lag(multi_dm.prediction_length, multi_dm.season_steps)
    arrays = multi_dm.series_arrays("val")
    starts = WindowBatches(new).starts + multi_dm.encoder_length
    assert bool((starts - lag >= arrays["series_start"][starts]).all())


def test_frame_needs_no_resort_when_built_in_order(multi_dm):
    frame = multi_dm.frame
    assert frame["series"].is_monotonic_increasing
    for _, part in frame.groupby("series"):
        assert np.all(np.diff(part["time_idx"].to_numpy()) > 0)
    assert frame.index.equals(pd.RangeIndex(len(frame)))
