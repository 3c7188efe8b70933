"""Fleet-sized data: the memory savings must not change a single window or batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.tft.test_fastpath import assert_same
from zoo.tft.fastpath import WindowBatches


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


def test_regular_data_skips_resampling_with_the_same_frame():
    """Data already on the step grid is taken as it is; the result is what resampling gives."""
    from zoo.tft import sources as S

    df = S.synthetic_hosts(n_hosts=3, days=2, step_minutes=5, seed=2)
    cols = [c for c in df.columns if c not in ("timestamp", "series")]
    step = pd.Timedelta("5min")
    assert S.already_regular(df, step, cols)
    fast = S.regularize(df, "5min", cols, 3, "w")
    slow = S.resample_series(df, step, cols, 3, "w", "5min")
    assert fast.equals(slow) and list(fast.columns) == list(slow.columns) and fast.index.equals(slow.index)
    # Off the grid, a missing value, a coarser step or unsorted rows: the per-series resampling.
    shifted = df.assign(timestamp=df["timestamp"] + pd.Timedelta("1min"))
    holed = df.copy()
    holed.loc[5, "cpu_percent"] = np.nan
    assert not S.already_regular(shifted, step, cols)
    assert not S.already_regular(holed, step, cols)
    assert not S.already_regular(df, pd.Timedelta("10min"), cols)
    assert not S.already_regular(df.iloc[::-1], step, cols)
    assert S.regularize(holed, "5min", cols, 3, "w").equals(
        S.resample_series(holed, step, cols, 3, "w", "5min")
    )


def test_duplicate_check_still_fires_on_sorted_data():
    from zoo.core.errors import ZooError
    from zoo.tft import sources as S

    df = S.synthetic_hosts(n_hosts=2, days=1, step_minutes=60)
    assert S.strictly_increasing(df["series"], df["timestamp"])
    dup = pd.concat([df.iloc[:3], df.iloc[2:3], df.iloc[3:]], ignore_index=True)
    assert not S.strictly_increasing(dup["series"], dup["timestamp"])
    import pytest

    with pytest.raises(ZooError, match="duplicated timestamp"):
        S.validate(dup, ["cpu_percent"], [], "data (t)")


def test_cached_frame_round_trips_by_row_group(tmp_path):
    """write_frame/read_frame (row group by row group) give back the frame `pd.read_parquet` would."""
    from zoo.tft.frames import read_frame, write_frame

    frame = pd.DataFrame({
        "timestamp": pd.date_range("2024-01-01", periods=2500, freq="5min"),
        "series": np.repeat(["a", "b", "c", "d", "e"], 500), "x": np.arange(2500.0), "i": np.arange(2500),
    })  # fmt: skip
    frame.loc[7, "x"] = np.nan
    path = tmp_path / "f.parquet"
    write_frame(frame, path, rows=700)
    back = read_frame(path)
    assert back.equals(frame) and back.equals(pd.read_parquet(path)) and (back.dtypes == frame.dtypes).all()
    assert back["series"].iloc[0] is back["series"].iloc[499]  # one string object per distinct id
