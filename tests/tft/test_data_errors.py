"""Loaders, column mapping, gap handling, and the one-line messages for bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zoo.core.errors import ZooError
from zoo.tft.datamodule import MetricsDataModule


def table(n=60, hosts=("a", "b"), step="5min"):
    rows = []
    for h in hosts:
        ts = pd.date_range("2024-01-01", periods=n, freq=step)
        rows.append(
            pd.DataFrame(
                {"ts": ts, "machine": h, "cpu": np.linspace(1, 50, n), "mem": 40.0 + np.sin(np.arange(n))}
            )
        )
    return pd.concat(rows, ignore_index=True)


def file_dm(path, tmp_path, **kw):
    args = dict(source="file", path=str(path), columns={"timestamp": "ts", "series": "machine", "cpu_percent": "cpu", "memory_percent": "mem"},
                targets=["cpu_percent", "memory_percent"], static_categoricals=[], step="5min", max_gap="10min",
                encoder_length=12, prediction_length=4, cache_dir=str(tmp_path / "cache"), num_workers=0, batch_size=4)  # fmt: skip
    args.update(kw)
    dm = MetricsDataModule(**args)
    dm.prepare_data()
    return dm


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "jsonl"])
def test_file_formats_with_column_mapping(tmp_path, fmt):
    df = table()
    path = tmp_path / f"m.{fmt}"
    if fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "json":
        df.assign(ts=df["ts"].astype(str)).to_json(path, orient="records")
    else:
        df.assign(ts=df["ts"].astype(str)).to_json(path, orient="records", lines=True)
    dm = file_dm(path, tmp_path)
    dm.setup()
    assert sorted(dm.frame["series"].unique()) == ["a", "b"]
    assert len(dm.frame) == 120
    np.testing.assert_allclose(
        dm.frame.loc[dm.frame["series"] == "a", "cpu_percent"].to_numpy(),
        df.loc[df["machine"] == "a", "cpu"].to_numpy(),
    )
    assert len(dm.datasets["train"]) > 0 and len(dm.datasets["val"]) > 0


def test_irregular_samples_are_resampled_and_long_gaps_split_the_series(tmp_path):
    df = table(n=120, hosts=("a",), step="1min")  # 1-minute samples -> 24 five-minute bins
    gap = (df["ts"] >= "2024-01-01 00:40") & (df["ts"] < "2024-01-01 01:00")  # 20 min hole > max_gap
    df = df[~gap]
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    dm = file_dm(path, tmp_path, encoder_length=3, prediction_length=2, val_fraction=0.3)
    dm.setup()
    segments = dm.frame.groupby("series")["time_idx"].agg(["min", "max", "count"])
    assert list(segments.index) == ["a", "a#1"]
    assert (
        segments["max"] - segments["min"] + 1 == segments["count"]
    ).all()  # contiguous steps within a segment
    first = dm.frame[dm.frame["series"] == "a"]
    assert first["cpu_percent"].iloc[0] == pytest.approx(df["cpu"].iloc[:5].mean())  # mean of the bin


def test_short_gaps_are_forward_filled(tmp_path):
    df = table(n=60, hosts=("a",))
    df = df.drop(index=[20])  # one missing 5-minute sample <= max_gap
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    dm = file_dm(path, tmp_path)
    dm.setup()
    assert list(dm.frame["series"].unique()) == ["a"] and len(dm.frame) == 60
    assert dm.frame["cpu_percent"].iloc[20] == dm.frame["cpu_percent"].iloc[19]


def test_missing_column_message(tmp_path):
    path = tmp_path / "m.parquet"
    table().drop(columns=["mem"]).to_parquet(path)
    with pytest.raises(
        ZooError,
        match=r"column 'mem' \(data.columns.memory_percent\) not found; available columns: ts, machine, cpu",
    ):
        file_dm(path, tmp_path)


def test_missing_target_without_mapping_message(tmp_path):
    path = tmp_path / "m.parquet"
    table().to_parquet(path)
    with pytest.raises(
        ZooError,
        match=r"missing column\(s\) disk_percent \(map it with data.columns.<name>=<source column>\)",
    ):
        file_dm(path, tmp_path, targets=["cpu_percent", "disk_percent"])


def test_non_numeric_target_message(tmp_path):
    df = table()
    df["cpu"] = df["cpu"].astype(object)
    df.loc[7, "cpu"] = "high"
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    with pytest.raises(
        ZooError, match=r"target/covariate column 'cpu_percent' is not numeric \(e.g. value 'high' in row 7\)"
    ):
        file_dm(path, tmp_path)


def test_duplicated_timestamps_message_and_mean_option(tmp_path):
    df = table()
    df = pd.concat([df, df.iloc[[3]].assign(cpu=99.0)], ignore_index=True)
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    with pytest.raises(
        ZooError,
        match=r"duplicated timestamp 2024-01-01 00:15:00 in series 'a' \(2 rows with a repeated timestamp in that series\): set data.duplicates=mean",
    ):
        file_dm(path, tmp_path)
    dm = file_dm(path, tmp_path, duplicates="mean")
    dm.setup()
    assert dm.frame["cpu_percent"].iloc[3] == pytest.approx((df["cpu"].iloc[3] + 99.0) / 2)


def test_duplicate_count_is_the_named_series(tmp_path):
    """Series 'a' has 6 repeated timestamps (12 rows), 'b' 12 (24 rows): the count is a's, the total aside."""
    df = table()
    a, b = df.index[df["machine"] == "a"], df.index[df["machine"] == "b"]
    df = pd.concat([df, df.loc[a[:6]], df.loc[b[:12]]], ignore_index=True)
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    with pytest.raises(
        ZooError,
        match=r"in series 'a' \(12 rows with a repeated timestamp in that series; 36 in 2 series\): set data.duplicates=mean",
    ):
        file_dm(path, tmp_path)


def test_drop_short_series_names_what_it_dropped(tmp_path, caplog):
    df = pd.concat([table(n=60, hosts=("a",)), table(n=10, hosts=("tiny",)), table(n=12, hosts=("small",))])
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    dm = file_dm(path, tmp_path, drop_short_series=True)
    with caplog.at_level("WARNING", logger="zoo.tft.datamodule"):
        dm.setup()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "data.drop_short_series=true dropped 2 series without 16 gap-free steps (encoder_length+prediction_length): "
        "'small' (12 rows, 0 windows), 'tiny' (10 rows, 0 windows); 22 rows and 0 training/evaluation windows lost"
    ) in text
    # With lags, a series long enough before the warm-up ('mid', 20 steps: 5 windows) loses real windows.
    path = tmp_path / "m2.parquet"
    pd.concat([df, table(n=20, hosts=("mid",))]).to_parquet(path)
    dm = file_dm(path, tmp_path, drop_short_series=True, lags=[6])
    with caplog.at_level("WARNING", logger="zoo.tft.datamodule"):
        caplog.clear()
        dm.setup()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "dropped 3 series without 16 gap-free steps (encoder_length+prediction_length) after the 6-step"
        in text
    )
    assert "'mid' (20 rows, 5 windows); 42 rows and 5 training/evaluation windows lost" in text
    assert list(dm.frame["series"].unique()) == ["a"]


def test_too_short_series_message(tmp_path):
    df = pd.concat([table(n=60, hosts=("a",)), table(n=10, hosts=("tiny",))], ignore_index=True)
    path = tmp_path / "m.parquet"
    df.to_parquet(path)
    with pytest.raises(
        ZooError,
        match=r"series 'tiny' has no stretch of 16 steps \(encoder_length\+prediction_length\) without gaps \(10 raw rows\)",
    ):
        file_dm(path, tmp_path)
    dm = file_dm(path, tmp_path, drop_short_series=True)
    dm.setup()
    assert list(dm.frame["series"].unique()) == ["a"]


def test_missing_file_message(tmp_path):
    with pytest.raises(ZooError, match=r"data.path=.*nope.parquet: no such file"):
        MetricsDataModule(source="file", path=str(tmp_path / "nope.parquet"), cache_dir=str(tmp_path))


def test_synthetic_noise_is_known(multi_dm):
    import pandas as pd

    # The noise-free columns stay in the cache file; the frame the datasets use leaves them out.
    assert not [c for c in multi_dm.frame.columns if c.endswith("_clean")]
    frame = pd.read_parquet(multi_dm.folder / "frame.parquet")
    resid = frame["cpu_percent"] - frame["cpu_percent_clean"]
    assert resid.std() == pytest.approx(1.0, rel=0.15)  # SMALL's synthetic.noise
