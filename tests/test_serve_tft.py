"""`python -m zoo.serve` of a TFT: POST /v1/forecast (JSON records and a CSV body) answers the numbers of
`zoo.predict`'s forecast.csv; bad requests (unknown field, wrong type, missing column, history too short,
unknown series, body too large) get a one-line 4xx and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.serving import one_line_error, serving


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """A tiny `experiment=tft_small` run (4 steps) and recent rows of 3 hosts, as a CSV."""
    from tests.tft.test_predict import _recent_csv
    from zoo.core.config import compose_config
    from zoo.train import train

    root = tmp_path_factory.mktemp("tft_serve")
    cfg = compose_config(
        ["experiment=tft_small", "trainer=cpu", "trainer.max_steps=4", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=2", "data.num_workers=0", "logger=none", "callbacks.rich_progress_bar=null",
         "model.plots=false", f"paths.cache_dir={cache_dir}"],
        output_dir=root / "run",
    )  # fmt: skip
    train(cfg)
    recent = _recent_csv({"cache": cache_dir}, root / "recent.csv")
    return {"run": root / "run", "recent": recent, "cache": cache_dir, "root": root}


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    with serving(
        run["run"], "max_body_bytes=20000", "max_batch_size=4", log_dir=tmp_path_factory.mktemp("tft_logs")
    ) as srv:
        yield srv


def predicted(run: dict[str, Path], tmp: Path, recent: Path) -> pd.DataFrame:
    from zoo.core.config import compose_config
    from zoo.predict import predict

    cfg = compose_config([f"ckpt_path={run['run']}", f"input={recent}", "plot=false", f"paths.cache_dir={run['cache']}",
                          f"output={tmp / 'forecast.csv'}"], output_dir=tmp / "pred", config_name="predict")  # fmt: skip
    predict(cfg)
    return pd.read_csv(tmp / "forecast.csv", float_precision="round_trip")  # the exact numbers written


@pytest.mark.slow
def test_forecast_equals_predict_from_json_and_csv(server, run, tmp_path):
    expect = predicted(run, tmp_path, run["recent"])
    recent = pd.read_csv(run["recent"])
    status, body = server.post("/v1/forecast", {"rows": recent.to_dict(orient="records")})
    assert status == 200, body
    got = pd.DataFrame(body["forecast"])
    assert body["series"] == 3 and body["horizon"] == 6 and len(got) == len(expect)
    assert list(got.columns) == list(expect.columns)
    assert (
        got["series"].tolist() == expect["series"].tolist()
        and got["step"].tolist() == expect["step"].tolist()
    )
    assert pd.to_datetime(got["timestamp"]).tolist() == pd.to_datetime(expect["timestamp"]).tolist()
    numbers = ["point", *[c for c in expect.columns if c.startswith("q")]]
    assert (got[numbers].to_numpy() == expect[numbers].to_numpy()).all()
    status, csv_body = server.post(
        "/v1/forecast", run["recent"].read_bytes(), headers={"Content-Type": "text/csv"}
    )
    assert status == 200 and csv_body["forecast"] == body["forecast"]
    card = server.request("GET", "/v1/models")[1]["data"][0]
    assert card["family"] == "tft" and card["recipe"] == "tft_small"


@pytest.mark.slow
def test_bad_forecast_requests_one_line_4xx_then_a_good_one(server, run):
    recent = pd.read_csv(run["recent"])
    rows = recent.to_dict(orient="records")
    short = recent.groupby("series").tail(5).to_dict(orient="records")
    renamed = recent.assign(series=recent["series"].str.replace("host00", "elsewhere")).to_dict(
        orient="records"
    )
    no_target = recent.drop(columns=["cpu_percent"]).to_dict(orient="records")
    cases = [
        ({"rows": rows, "horizon": 3}, "horizon"),  # unknown field
        ({"rows": "a,b"}, "rows"),  # wrong type
        ({"rows": []}, "rows"),
        ({"records": rows}, "rows"),  # missing
        ({"rows": [[1, 2]]}, "rows"),
        ({"rows": rows, "allow_unknown_series": "yes please"}, "allow_unknown_series"),
        ({"rows": no_target}, "cpu_percent"),  # a target column missing
        ({"rows": short}, "encoder_length"),  # history too short
        ({"rows": renamed}, "elsewhere"),  # a series the model was not trained on
    ]
    for body, field in cases:
        one_line_error(*server.post("/v1/forecast", body), field)
    one_line_error(
        *server.post("/v1/forecast", b"timestamp,series\n", headers={"Content-Type": "text/csv"}), "body"
    )
    status, body = server.post("/v1/forecast", {"rows": rows * 4})
    assert status == 413
    one_line_error(status, body, "body")
    status, body = server.post("/v1/forecast", {"rows": renamed, "allow_unknown_series": True})
    assert status == 200 and {r["known_series"] for r in body["forecast"] if r["series"] == "elsewhere"} == {
        False
    }
    status, body = server.post("/v1/forecast", {"rows": rows})
    assert status == 200 and body["series"] == 3
