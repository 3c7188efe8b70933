"""python -m zoo.collect writes Parquet, appends without rewriting, and recovers an interrupted journal."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import run_cli
from zoo.tft.collect import JOURNAL, Collector, read


def test_collector_writes_and_appends(tmp_path):
    out = tmp_path / "me"
    c = Collector(out, host="box")
    assert c.run(interval=0.01, samples=3, flush_every=2) == 3
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2 and not (out / JOURNAL).exists()  # 2 samples, then the last one on exit
    first = read(out)
    assert len(first) == 3 and (first["host"] == "box").all()
    for col in ("cpu_percent", "memory_percent", "disk_percent", "load_average"):
        assert first[col].between(0, 1e6).all()
    before = {p: p.stat().st_mtime_ns for p in parts}
    Collector(out, host="box").run(interval=0.01, samples=2, flush_every=10)
    again = read(out)
    assert len(again) == 5 and again["timestamp"].is_monotonic_increasing
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # old parts untouched


def test_interrupted_journal_is_recovered(tmp_path):
    out = tmp_path / "me"
    c = Collector(out, host="box")
    for _ in range(3):
        c.append(c.sample())
    with open(out / JOURNAL, "a") as fh:
        fh.write('{"timestamp": "2024')  # the row being written when the process died
    del c  # no flush: as if killed
    Collector(out, host="box")  # a restart turns the journal into a part first
    assert not (out / JOURNAL).exists()
    assert len(pd.read_parquet(next(out.glob("part-*.parquet")))) == 3


def test_cli_and_training_on_collected_data(tmp_path):
    out = tmp_path / "me"
    proc = run_cli("zoo.collect", f"out={out}", "interval=0.01", "samples=4", "flush_every=2",
                   f"hydra.run.dir={tmp_path / 'run'}", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "collected 4 samples" in proc.stdout
    df = read(out)
    assert len(df) == 4 and set(json.loads(df.iloc[:1].to_json(orient="records"))[0]) >= {
        "timestamp",
        "host",
        "cpu_percent",
    }
    bad = run_cli("zoo.collect", f"out={out}", "interval=0", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert bad.returncode == 2 and "must be a positive number" in bad.stderr


def test_collected_folder_is_a_data_file_source(tmp_path):
    """The collector's layout is what data=tft/file reads (a folder of parts, host -> series)."""
    from zoo.tft.datamodule import MetricsDataModule

    out = tmp_path / "me"
    rows = []
    for i in range(80):  # a synthetic history in the collector's schema
        rows.append({"timestamp": pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=i), "host": "box",
                     "cpu_percent": float(i % 7), "memory_percent": 50.0, "disk_percent": 40.0, "load_average": 0.5})  # fmt: skip
    out.mkdir()
    pd.DataFrame(rows[:40]).to_parquet(out / "part-a.parquet")
    pd.DataFrame(rows[40:]).to_parquet(out / "part-b.parquet")
    dm = MetricsDataModule(source="file", path=str(out), columns={"timestamp": "timestamp", "series": "host"}, step="1min",
                           max_gap="5min", encoder_length=20, prediction_length=5, cache_dir=str(tmp_path / "c"), num_workers=0)  # fmt: skip
    dm.setup()
    assert len(dm.frame) == 80 and list(dm.frame["series"].unique()) == ["box"]
