"""`python -m zoo.serve` of an event predictor: POST /v1/next-events (JSON and CSV) answers the rows of
`zoo.predict`'s predictions.csv; bad requests get a one-line 4xx and the server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.serving import one_line_error, serving


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    from tests.events.test_predict import train_small_run

    root = tmp_path_factory.mktemp("events_serve")
    train_small_run(root, cache_dir)
    return {"run": root / "run", "history": root / "history.csv", "cache": cache_dir}


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    with serving(run["run"], "max_k=8", log_dir=tmp_path_factory.mktemp("events_logs")) as srv:
        yield srv


@pytest.mark.slow
def test_next_events_equal_predict_from_json_and_csv_then_bad_requests(server, run, tmp_path):
    from zoo.core.config import compose_config
    from zoo.predict import predict

    out = tmp_path / "predictions.csv"
    cfg = compose_config([f"ckpt_path={run['run']}", f"input={run['history']}", "k=3", f"output={out}",
                          f"paths.cache_dir={run['cache']}"], output_dir=tmp_path / "pred", config_name="predict")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's worker runs one thread (threads=1): the same float sums
    try:
        predict(cfg)
    finally:
        torch.set_num_threads(threads)
    expect = pd.read_csv(out, dtype=str, keep_default_na=False)
    history = pd.read_csv(run["history"], dtype=str)
    status, body = server.post(
        "/v1/next-events", {"events": json.loads(history.to_json(orient="records")), "k": 3}
    )
    assert status == 200, body
    got = pd.DataFrame(body["predictions"]).fillna("").astype(str)
    assert list(got.columns) == list(expect.columns)
    for col in expect.columns:  # the CSV's text of every value
        if col.endswith("_p") or col == "days_to_event":
            assert got[col].astype(float).tolist() == expect[col].astype(float).tolist(), col
        else:
            assert got[col].tolist() == expect[col].tolist(), col
    assert body["unknown_values"] == {"Resource": 1} and body["cases"] == 6
    status, csv_body = server.post(
        "/v1/next-events?k=3", run["history"].read_bytes(), headers={"Content-Type": "text/csv"}
    )
    assert status == 200 and csv_body["predictions"] == body["predictions"]
    events = json.loads(history.to_json(orient="records"))
    cases = [
        ({"events": events, "k": 3, "beam": 2}, "beam"),
        ({"events": events, "k": "three"}, "k"),
        ({"events": events, "k": 9}, "k"),  # above max_k=8
        ({"events": events, "sampling": "best"}, "sampling"),
        ({"events": []}, "events"),
        ({"events": [{"Case": "C1", "Task": {"nested": 1}}]}, "Task"),
        ({"events": json.loads(history.drop(columns=["Task"]).to_json(orient="records"))}, "Task"),
    ]
    for req, field in cases:
        one_line_error(*server.post("/v1/next-events", req), field)
    status, again = server.post("/v1/next-events", {"events": events, "k": 3})
    assert status == 200 and again["predictions"] == body["predictions"]
