"""TFT prediction on new data: `python -m zoo.predict` from a checkpoint, a run folder and an export folder
(forecast.csv layout, forecast.png), one-line errors for inputs a forecast cannot use, and the ONNX export
(`model.onnx` against the PyTorch network, ``backend=onnx`` against ``backend=torch``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.core.errors import ZooError
from zoo.tft.module import TFTModule
from zoo.tft.predict import forecast

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="the onnx extra is not installed (pip install -e '.[onnx]')"
)
NET = {"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4, "dropout": 0.0}
ONNX_TOL = 1e-4


def trained_module(dm, seed=0, steps=3) -> TFTModule:
    """A small module moved away from its initialization, so a wrong weight or scale shows."""
    torch.manual_seed(seed)
    model = TFTModule(**dm.model_kwargs(), net=NET)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = dm.batches("train").__getitems__(list(range(16)))
    for _ in range(steps):
        opt.zero_grad()
        model._loss(x, y, model(x)).backward()
        opt.step()
    return model.eval()


def recent_rows(dm, n=30) -> pd.DataFrame:
    raw = dm.raw_frame()
    return raw.groupby("series").tail(n).reset_index(drop=True)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def quantile_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("q")]


# -- forecast() and its errors ------------------------------------------------------------------------------
def test_forecast_layout_one_row_per_series_target_and_future_step(multi_dm):
    model = trained_module(multi_dm)
    recent = recent_rows(multi_dm)
    fc = forecast(model, recent)
    P, targets = model.prediction_length, model.target_names
    assert len(fc) == recent["series"].nunique() * len(targets) * P
    assert list(fc.columns[:6]) == ["series", "target", "timestamp", "step", "time_idx", "point"]
    assert quantile_columns(fc) == [f"q{q:g}" for q in model.quantiles]
    assert not fc.duplicated(["series", "target", "timestamp"]).any()
    for series, part in fc.groupby("series"):
        last = recent.loc[recent["series"] == series, "timestamp"].max()
        expect = (last + pd.to_timedelta(np.arange(1, P + 1), unit="h")).to_numpy()
        for target in targets:
            stamps = part.loc[part["target"] == target, "timestamp"].to_numpy()
            assert (stamps == expect).all()
    assert list(dict.fromkeys(fc["target"])) == targets  # the model's order
    np.testing.assert_array_equal(fc["point"], fc["q0.5"])  # model.point=median
    assert fc["known_series"].all()
    # From the raw rows of a validation window's encoder, forecast() gives what the network gives on that
    # window in training (same resampling, calendar features, target scales and encodings).
    index = multi_dm.datasets["val"].decoded_index
    i = int(np.flatnonzero((index["series"] == "host01").to_numpy())[-1])
    start = pd.Timestamp(multi_dm.manifest["origin"]) + pd.Timedelta("1h") * int(
        index["time_idx_first"].iloc[i]
    )
    stop = start + pd.Timedelta("1h") * (model.encoder_length - 1)
    raw = multi_dm.raw_frame()
    rows = raw[(raw["series"] == "host01") & (raw["timestamp"] >= start) & (raw["timestamp"] <= stop)]
    x, _ = multi_dm.batches("val").__getitems__([i])
    with torch.no_grad():
        expect = model.quantile_forecast(model(x))
    again = forecast(model, rows)
    for t, target in enumerate(targets):
        got = again.loc[again["target"] == target, quantile_columns(again)].to_numpy()
        np.testing.assert_allclose(got, expect[t][0].numpy(), rtol=1e-5, atol=1e-4)


def test_unknown_series_is_forecast_with_the_unknown_encoding_and_flagged(multi_dm):
    model = trained_module(multi_dm)
    recent = recent_rows(multi_dm)
    renamed = recent.assign(series=recent["series"].replace({"host02": "brand-new", "host01": "other-new"}))
    fc = forecast(model, renamed)
    flags = fc.groupby("series")["known_series"].first().to_dict()
    assert flags == {"host00": True, "brand-new": False, "other-new": False}
    assert np.isfinite(fc[quantile_columns(fc)].to_numpy()).all()
    # Each unknown series is its own window: the same rows give the same forecast under another name.
    alone = forecast(model, recent[recent["series"] == "host02"].assign(series="brand-new"))
    both = fc[fc["series"] == "brand-new"].reset_index(drop=True)
    np.testing.assert_allclose(both[quantile_columns(fc)], alone[quantile_columns(alone)], atol=1e-5)
    # A model without an unknown-series encoding refuses, naming the series.
    model.dataset_parameters["categorical_encoders"]["__group_id__series"].add_nan = False
    try:
        with pytest.raises(ZooError) as err:
            forecast(model, renamed, where="input=recent.csv")
        assert "input=recent.csv: series 'brand-new' was not in the training data" in one_line(err)
    finally:
        model.dataset_parameters["categorical_encoders"]["__group_id__series"].add_nan = True


def test_bad_inputs_are_one_line_errors_naming_file_column_and_series(multi_dm):
    model = trained_module(multi_dm, steps=0)
    recent = recent_rows(multi_dm)
    where = "input=recent.csv"

    with pytest.raises(ZooError) as err:  # too short a history
        forecast(model, recent.groupby("series").tail(10), where=where)
    msg = one_line(err)
    assert (
        msg.startswith(where) and "series 'host00' has 10 steps of 1h" in msg and "encoder_length=24" in msg
    )

    with pytest.raises(ZooError) as err:  # a gap longer than max_gap leaves too short a last stretch
        host = recent[recent["series"] == "host00"]
        holed = host.drop(host.index[-8:-5])
        forecast(model, holed, where=where)
    msg = one_line(err)
    assert "series 'host00' has 5 steps of 1h" in msg and "since its last gap longer than 2h" in msg

    with pytest.raises(ZooError) as err:  # a missing target column
        forecast(model, recent.drop(columns=["memory_percent"]), where=where)
    msg = one_line(err)
    assert msg.startswith(where) and "missing column(s) 'memory_percent' (target)" in msg
    assert "available columns: timestamp, series, cpu_percent" in msg

    with pytest.raises(ZooError) as err:  # no timestamp
        forecast(model, recent.drop(columns=["timestamp"]), where=where)
    assert "missing column(s) 'timestamp' (time)" in one_line(err)

    with pytest.raises(ZooError) as err:  # sampled every 2 h, the model's step is 1 h
        coarse = recent_rows(multi_dm, 60).groupby("series").nth(slice(None, None, 2))
        forecast(model, coarse, where=where)
    msg = one_line(err)
    assert "series 'host00' is sampled every 2h, but the model forecasts in steps of 1h (data.step)" in msg

    with pytest.raises(ZooError) as err:  # a non-numeric target value
        bad = recent.astype({"cpu_percent": object})
        bad.loc[bad.index[3], "cpu_percent"] = "high"
        forecast(model, bad, where=where)
    assert "column 'cpu_percent' is not numeric (e.g. value 'high'" in one_line(err)


def test_finer_samples_are_averaged_into_the_models_step(multi_dm):
    """Samples every 30 min (a collector faster than data.step) forecast as their hourly means do."""
    model = trained_module(multi_dm, steps=0)
    hourly = recent_rows(multi_dm)
    hourly = hourly[hourly["series"] == "host00"]
    half = hourly.copy()
    half["timestamp"] = half["timestamp"] + pd.Timedelta("30min")
    fine = pd.concat([hourly, half]).sort_values("timestamp")  # each hour bin: the same value twice
    a, b = forecast(model, hourly), forecast(model, fine)
    np.testing.assert_allclose(a[quantile_columns(a)], b[quantile_columns(b)], atol=1e-5)


# -- ONNX ------------------------------------------------------------------------------------------------------
@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("dm_name", ["multi_dm", "single_dm"])
def test_onnx_export_matches_the_pytorch_network(dm_name, request, tmp_path):
    from zoo.tft.export import ONNX_FILE, OnnxForecaster

    dm = request.getfixturevalue(dm_name)
    model = trained_module(dm)
    folder = model.export(tmp_path / "export", dm, format="onnx")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", ONNX_FILE}
    loaded = TFTModule.from_export(folder)
    runner = OnnxForecaster(folder / ONNX_FILE, loaded)
    batches = dm.batches("val")
    for indices in ([0], list(range(min(len(batches), 37)))):  # batch 1 and another batch size than traced
        x, _ = batches.__getitems__(indices)
        with torch.no_grad():
            expect = model.quantile_forecast(model(x))
        got = runner(x)
        assert len(got) == len(expect) == len(model.target_names)
        for a, b in zip(got, expect):
            assert a.shape == b.shape == (len(indices), model.prediction_length, len(model.quantiles))
            assert float((a - b).abs().max()) <= ONNX_TOL
    recent = recent_rows(dm)
    a, b = forecast(loaded, recent), forecast(loaded, recent, onnx=folder / ONNX_FILE)
    cols = ["point", *quantile_columns(a)]
    assert a[["series", "target", "timestamp"]].equals(b[["series", "target", "timestamp"]])
    assert float((a[cols] - b[cols]).abs().to_numpy().max()) <= ONNX_TOL
    # Re-exporting as safetensors removes the graph, which would not follow later weights.
    model.export(folder, dm)
    assert not (folder / ONNX_FILE).exists()


@needs_onnx
def test_onnx_file_of_another_model_is_refused(multi_dm, single_dm, tmp_path):
    import onnx

    from zoo.tft.export import ONNX_FILE, OnnxForecaster, onnx_metadata

    single = trained_module(single_dm, steps=0)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["quantiles"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("quantiles", onnx.TensorProto.FLOAT, [1])])  # fmt: skip
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    for key, value in onnx_metadata(single).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp_path / ONNX_FILE))
    with pytest.raises(ZooError) as err:
        OnnxForecaster(tmp_path / ONNX_FILE, trained_module(multi_dm, steps=0))
    assert 'targets=["cpu_percent"] but the model\'s config.json says' in one_line(err)
    with pytest.raises(ZooError) as err:
        OnnxForecaster(tmp_path / "missing.onnx", single)
    assert "missing.onnx: no such file" in one_line(err)


# -- python -m zoo.predict ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cache_dir):
    """A tiny `python -m zoo.train experiment=tft_small` run, in-process: its best checkpoint and folder.
    Uncalibrated: a band calibration fitted after 4 steps scales the quantiles' float32 rounding up with
    its shifts (the calibration is the same Python code after either backend; tests/tft/test_calibration.py)."""
    from zoo.core.config import compose_config
    from zoo.train import train

    run_dir = tmp_path_factory.mktemp("tft_run")
    cfg = compose_config(
        ["experiment=tft_small", "trainer=cpu", "trainer.max_steps=4", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=2", "data.num_workers=0", "logger=none", "callbacks.rich_progress_bar=null",
         "model.plots=false", "++model.calibrate=false", f"paths.cache_dir={cache_dir}"],
        output_dir=run_dir,
    )  # fmt: skip
    train(cfg)
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts, "training wrote no checkpoint"
    from zoo.core.checkpoint import best_checkpoint_of_run

    return {"dir": run_dir, "ckpt": best_checkpoint_of_run(run_dir), "cache": cache_dir}


def _predict(ckpt_path, out_dir: Path, cache_dir, *overrides: str):
    from zoo.core.config import compose_config
    from zoo.predict import predict

    cfg = compose_config([f"ckpt_path={ckpt_path}", f"paths.cache_dir={cache_dir}", *overrides], output_dir=out_dir,
                         config_name="predict")  # fmt: skip
    return predict(cfg)


def _recent_csv(run, path: Path, n=30) -> Path:
    from tests.tft.conftest import small_dm

    dm = small_dm(run["cache"], synthetic={"n_hosts": 3, "days": 10, "step_minutes": 60, "seed": 0})
    recent = dm.raw_frame().groupby("series").tail(n)
    recent[[c for c in recent.columns if not c.endswith("_clean")]].to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_predict_from_checkpoint_run_folder_and_export_folder(trained_run, tmp_path, capsys):
    from zoo.core.config import compose_config
    from zoo.export import export

    run = trained_run
    recent = _recent_csv(run, tmp_path / "recent.csv")
    by_ckpt = _predict(run["ckpt"], tmp_path / "p1", run["cache"], f"input={recent}")
    out = capsys.readouterr().out
    assert "[zoo] forecast of 3 series x 4 targets x 6 steps of 1h (torch)" in out
    table = pd.read_csv(tmp_path / "p1" / "forecast.csv", parse_dates=["timestamp"])
    assert len(table) == 3 * 4 * 6 and "time_idx" not in table.columns
    assert list(table.columns[:5]) == ["series", "target", "timestamp", "step", "point"]
    assert quantile_columns(table) == ["q0.02", "q0.1", "q0.25", "q0.5", "q0.75", "q0.9", "q0.98"]
    png = tmp_path / "p1" / "forecast.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000

    by_folder = _predict(run["dir"], tmp_path / "p2", run["cache"], f"input={recent}", "plot=false",
                         f"output={tmp_path / 'p2' / 'fc.parquet'}")  # fmt: skip
    assert (tmp_path / "p2" / "fc.parquet").is_file() and not list((tmp_path / "p2").glob("*.png"))
    pd.testing.assert_frame_equal(by_ckpt, by_folder)

    fmt = "onnx" if HAS_ONNX else "safetensors"
    cfg = compose_config([f"ckpt_path={run['ckpt']}", f"format={fmt}", f"out={tmp_path / 'export'}"],
                         output_dir=tmp_path / "e", config_name="export")  # fmt: skip
    folder = export(cfg)
    assert {"config.json", "model.safetensors", "zoo.json", "README.md"} <= {p.name for p in folder.iterdir()}
    by_export = _predict(folder, tmp_path / "p3", run["cache"], f"input={recent}", "plot=false")
    pd.testing.assert_frame_equal(by_ckpt, by_export)

    with pytest.raises(ZooError) as err:  # onnx needs the export folder, not the checkpoint
        _predict(run["ckpt"], tmp_path / "p5", run["cache"], f"input={recent}", "backend=onnx")
    assert "backend=onnx needs an export folder with model.onnx" in one_line(err)
    if not HAS_ONNX:
        return
    assert (folder / "model.onnx").is_file()
    by_onnx = _predict(folder, tmp_path / "p4", run["cache"], f"input={recent}", "plot=false", "backend=onnx")
    cols = ["point", *quantile_columns(by_ckpt)]
    assert by_onnx[["series", "target", "timestamp"]].equals(by_ckpt[["series", "target", "timestamp"]])
    assert float((by_onnx[cols] - by_ckpt[cols]).abs().to_numpy().max()) <= ONNX_TOL
    assert "(onnx)" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_request_errors_name_the_input(trained_run, tmp_path, capsys):
    run = trained_run
    recent = _recent_csv(run, tmp_path / "recent.csv")
    with pytest.raises(ZooError) as err:
        _predict(run["ckpt"], tmp_path / "p", run["cache"])
    assert one_line(err).startswith("input= is required")
    with pytest.raises(ZooError) as err:
        _predict(run["ckpt"], tmp_path / "p", run["cache"], f"input={tmp_path / 'nope.csv'}")
    assert "nope.csv: no such file" in one_line(err)
    frame = pd.read_csv(recent)
    frame.drop(columns=["disk_percent"]).to_csv(tmp_path / "nodisk.csv", index=False)
    with pytest.raises(ZooError) as err:
        _predict(run["ckpt"], tmp_path / "p", run["cache"], f"input={tmp_path / 'nodisk.csv'}")
    assert one_line(err).startswith(
        f"input={tmp_path / 'nodisk.csv'}: missing column(s) 'disk_percent' (target)"
    )
    # The user's own column names, mapped like data.columns; a host the model never saw gets a note.
    frame.rename(columns={"series": "hostname", "cpu_percent": "cpu"}).replace({"host01": "laptop"}).to_csv(
        tmp_path / "mine.csv", index=False
    )
    fc = _predict(run["ckpt"], tmp_path / "p", run["cache"], f"input={tmp_path / 'mine.csv'}", "plot=false",
                  "+columns={series: hostname, cpu_percent: cpu}")  # fmt: skip
    assert set(fc["series"]) == {"host00", "laptop", "host02"}
    assert not fc.loc[fc["series"] == "laptop", "known_series"].any()
    assert "note: 1 series not in the training data (laptop)" in capsys.readouterr().out


@needs_onnx
@pytest.mark.slow
def test_cli_predict_onnx_export(trained_run, tmp_path):
    """As a user runs it: python -m zoo.predict backend=onnx on an export folder (made here in-process)."""
    from tests.conftest import run_cli
    from zoo.core.export import export_run
    from zoo.core.family import load_run

    run = trained_run
    recent = _recent_csv(run, tmp_path / "recent.csv")
    loaded = load_run(run["ckpt"])
    folder = export_run(loaded.module, tmp_path / "export", loaded.config, "onnx")
    proc = run_cli("zoo.predict", f"ckpt_path={folder}", f"input={recent}", "backend=onnx", f"output={tmp_path / 'fc.csv'}",
                   f"hydra.run.dir={tmp_path / 'p'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(onnx)" in proc.stdout
    assert len(pd.read_csv(tmp_path / "fc.csv")) == 3 * 4 * 6 and (tmp_path / "fc.png").is_file()
