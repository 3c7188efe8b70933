"""data=tft/prometheus without a real server (tests/tft/fakeprom.py): the time chunks under the points limit,
the parallel pull and its parts, resuming at the first missing chunk, retries, one-line errors naming the
expression, and the datamodule's frame. The real parts: tests/prometheus (make test-prometheus)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.tft.fakeprom import FakePrometheus
from zoo.core.errors import ZooError
from zoo.tft import prometheus as prom

T0 = 1_699_999_980.0  # a unix time on the 1-minute grid


def cpu(h):
    return lambda t: 50 + 10 * math.sin(t / 3600 + h)


def mem(h):
    return lambda t: 30 + h + (t - T0) / 1e5


def fleet(fake, hosts=3):
    fake.series["cpu"] = [({"instance": f"h{h}:9100", "job": "node"}, cpu(h)) for h in range(hosts)]
    fake.series["mem"] = [({"instance": f"h{h}:9100", "job": "node"}, mem(h)) for h in range(hosts)]


def source(url, end=T0 + 599 * 60, **pull):
    return prom.make_source(url, {"cpu_percent": "cpu", "memory_percent": "mem"}, ["cpu_percent", "memory_percent"],
                            T0, end, "1min", None, {"backoff": 0.01, **pull})  # fmt: skip


@pytest.mark.parametrize(
    "total,per", [(1, 10), (10, 10), (11, 10), (10_081, 11_000), (25_000, 11_000), (7, 2)]
)
def test_chunks_cover_the_range_once_under_the_points_limit(total, per):
    s = prom.Source(
        "http://x", {"a": "a"}, T0, T0 + (total - 1) * 60.0, 60.0, pull=prom.PullSettings(max_points=per)
    )
    chunks = s.chunks()
    points = [round((b - a) / 60) + 1 for a, b in chunks]
    assert sum(points) == total and max(points) <= per and len(chunks) == math.ceil(total / per)
    assert chunks[0][0] == T0 and chunks[-1][1] == T0 + (total - 1) * 60
    assert all(b2 == b1 + 60 for (_, b1), (b2, _) in zip(chunks, chunks[1:]))  # next chunk starts one step on


def test_pull_reads_every_series_in_chunks_in_parallel(tmp_path):
    with FakePrometheus() as fake:
        fleet(fake)
        s = source(fake.url, max_points=128, parallel=3)
        frame = prom.load(s, tmp_path / "pull", progress=False)
    assert len(s.chunks()) == 5  # 600 steps in chunks of 128
    assert len(fake.requests) == 2 * 5 and all(
        round((e - b) / st) + 1 <= 128 for _, b, e, st in fake.requests
    )
    assert list(frame.columns) == ["timestamp", "series", "cpu_percent", "memory_percent", "label_instance"]
    assert len(frame) == 3 * 600 and frame["series"].nunique() == 3
    h1 = frame[frame["series"] == "h1:9100"]
    t = h1["timestamp"].astype("int64").to_numpy() / 1e9
    np.testing.assert_allclose(h1["cpu_percent"], [cpu(1)(v) for v in t])
    np.testing.assert_allclose(h1["memory_percent"], [mem(1)(v) for v in t])


def test_a_killed_pull_resumes_at_the_first_missing_chunk(tmp_path):
    with FakePrometheus() as fake:
        fleet(fake)
        s = source(fake.url, max_points=100, parallel=1, retries=0)
        prom.pull(s, tmp_path / "pull")
        parts = sorted((tmp_path / "pull").glob("*.parquet"))
        assert len(parts) == 12
        for p in parts[-5:]:  # as if killed after the first chunks
            p.unlink()
        fake.requests.clear()
        prom.pull(s, tmp_path / "pull")
        assert len(fake.requests) == 5  # only the missing parts
        fake.requests.clear()
        prom.pull(s, tmp_path / "pull")
        assert fake.requests == []


def test_transient_failures_are_retried(tmp_path):
    with FakePrometheus() as fake:
        fleet(fake)
        fake.fail["cpu"] = 2
        frame = prom.load(source(fake.url, retries=2), tmp_path / "pull", progress=False)
        assert len(frame) == 1800
        fake.fail["mem"] = 5
        with pytest.raises(ZooError, match="unreachable|refused"):
            prom.load(source(fake.url, end=T0 + 1000 * 60, retries=1), tmp_path / "pull2", progress=False)


@pytest.mark.parametrize(
    "case,match",
    [
        (
            "bad",
            r"data.queries.cpu_percent='cpu\{': Prometheus refused the query \(bad_data: 1:5: parse error",
        ),
        ("empty", r"data.queries.cpu_percent='cpu': no samples between data.start and data.end"),
        ("offstep", r"data.queries.cpu_percent='cpu': sample at .* is off the data.step=60s grid"),
        ("duplicate", r"two result series share the id 'h0:9100'.*aggregate them, e.g. max by \(instance\)"),
        ("nolabel", r"a result series has no label 'instance'"),
    ],
)
def test_bad_queries_fail_in_one_line_naming_the_expression(tmp_path, case, match):
    with FakePrometheus() as fake:
        fleet(fake)
        expr = "cpu"
        if case == "bad":
            expr = "cpu{"
            fake.bad.add(expr)
        elif case == "empty":
            fake.series["cpu"] = []
        elif case == "offstep":
            fake.offset = 7.0
        elif case == "duplicate":
            fake.series["cpu"].append(({"instance": "h0:9100", "job": "other"}, cpu(5)))
        elif case == "nolabel":
            fake.series["cpu"] = [({"job": "node"}, cpu(0))]
        s = prom.make_source(fake.url, {"cpu_percent": expr, "memory_percent": "mem"},
                             ["cpu_percent", "memory_percent"], T0, T0 + 59 * 60, "1min", None, None)  # fmt: skip
        with pytest.raises(ZooError, match=match) as err:
            prom.load(s, tmp_path / "pull", progress=False)
    assert "\n" not in str(err.value)


def test_an_unreachable_server_is_named(tmp_path):
    from benchmarks.promstack import free_port

    s = prom.make_source(f"http://127.0.0.1:{free_port()}", None, ["load_average"], T0, T0 + 600, "1min", None,
                         {"retries": 1, "backoff": 0.01})  # fmt: skip
    with pytest.raises(ZooError, match=r"data.queries.load_average='node_load1': Prometheus at data.url=http://127.0.0.1:\d+ is unreachable after 2 tries"):  # fmt: skip
        prom.load(s, tmp_path / "pull", progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"url": None}, "data.url is not set"),
        ({"url": "localhost:9090"}, "data.url=localhost:9090: expected an http"),
        ({"start": "yesterday"}, "data.start=yesterday: expected unix seconds, a date"),
        ({"start": T0, "end": T0 - 60}, "is not before data.end"),
        ({"targets": ["gpu_percent"]}, "data.queries has no PromQL expression for target\\(s\\) gpu_percent"),
        ({"pull": {"threads": 3}}, "data.pull.threads: unknown setting"),
        ({"series_labels": []}, "data.series_labels is empty"),
    ],
)
def test_bad_settings_fail_in_one_line(kwargs, match):
    args = {"url": "http://127.0.0.1:9090", "queries": None, "targets": ["cpu_percent"], "start": T0,
            "end": T0 + 3600, "step": "1min", "series_labels": ["instance"], "pull": None, **kwargs}  # fmt: skip
    with pytest.raises(ZooError, match=match):
        prom.make_source(**args)


def test_relative_times_are_aligned_to_the_step():
    s = prom.make_source("http://127.0.0.1:9090", None, ["cpu_percent"], "now-1h", "now", "5min", None, None)
    assert s.start % 300 == 0 and s.end % 300 == 0 and 3300 <= s.end - s.start <= 3600
    assert prom.to_seconds("2024-01-01T00:00", "data.start") == 1704067200.0
    assert s.queries["cpu_percent"] == prom.DEFAULT_QUERIES["cpu_percent"]


def test_datamodule_builds_its_frame_from_prometheus(tmp_path):
    from zoo.tft.datamodule import MetricsDataModule

    with FakePrometheus() as fake:
        fleet(fake)
        dm = MetricsDataModule(source="prometheus", url=fake.url, queries={"cpu_percent": "cpu", "memory_percent": "mem"},
                               targets=["cpu_percent", "memory_percent"], start=T0, end=T0 + 599 * 60, step="1min",
                               max_gap="5min", encoder_length=30, prediction_length=10, num_workers=0,
                               pull={"max_points": 250}, cache_dir=str(tmp_path), name="prom")  # fmt: skip
        dm.prepare_data()
        dm.setup()
        n = len(fake.requests)
        again = MetricsDataModule(
            **{**dm.config.__dict__, "num_workers": 0, "cache_dir": str(tmp_path)}, name="prom"
        )
        again.prepare_data()
        assert len(fake.requests) == n  # cached: the server is not asked again
    assert sorted(dm.frame["series"].unique()) == ["h0:9100", "h1:9100", "h2:9100"]
    assert dm.manifest["rows"] == 1800 and len(dm.datasets["train"]) > 0
    assert sorted(p.name for p in (dm.folder / "pull").glob("*.parquet"))[0] == "cpu_percent-00000.parquet"


def test_the_chunk_plan_bounds_samples_per_query_and_survives_a_resume(tmp_path):
    with FakePrometheus() as fake:
        fleet(fake)
        s = source(fake.url, max_samples=150)  # 3 series -> 50 steps per query
        frame = prom.load(s, tmp_path / "pull", progress=False)
        assert {round((e - b) / st) + 1 for _, b, e, st in fake.requests} == {50}
        assert len(fake.requests) == 2 * 12 and len(frame) == 1800
        fake.series["cpu"].append(
            ({"instance": "h9:9100", "job": "node"}, cpu(9))
        )  # the fleet grew meanwhile
        (tmp_path / "pull" / "cpu_percent-00003.parquet").unlink()
        fake.requests.clear()
        again = prom.load(s, tmp_path / "pull", progress=False)
        assert [(round(b), round(e)) for _, b, e, _ in fake.requests] == [(T0 + 150 * 60, T0 + 199 * 60)]
        assert again["series"].nunique() == 4  # the new host's 50 resumed steps, NaN memory: kept


def test_a_target_missing_for_a_while_keeps_the_other_targets(tmp_path):
    with FakePrometheus() as fake:
        fleet(fake)
        fake.series["mem"][0] = (fake.series["mem"][0][0], lambda t: None if t < T0 + 100 * 60 else 5.0)
        frame = prom.load(source(fake.url), tmp_path / "pull", progress=False)
    h0 = frame[frame["series"] == "h0:9100"]
    assert len(h0) == 600 and h0["memory_percent"].isna().sum() == 100 and h0["cpu_percent"].notna().all()


def matrix(result, **dumps):
    body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    return json.dumps(body, **{"separators": (",", ":"), "ensure_ascii": False, **dumps})


ODD_LABELS = {"instance": 'a]],"values":[[1,"2"]]}', "job": "nöde <&>", "__name__": "x"}


def test_the_fast_matrix_parser_equals_a_json_parser():
    result = [
        {
            "metric": ODD_LABELS,
            "values": [[1700000000.123, "NaN"], [1700000060, "+Inf"], [1700000120, "-Inf"]],
        },
        {
            "metric": {"instance": "b"},
            "values": [[1700000000, "1e-05"], [1700000060, "-3.5"], [1700000120, "0"]],
        },
        {"metric": {}, "values": [[1700000000, "12345678.9012345"]]},
    ]
    for body in (matrix(result), matrix(result, ensure_ascii=True), matrix([])):
        fast = prom.parse_matrix(body)
        reference = prom._series_of(json.loads(body)["data"]["result"])
        assert fast is not None and len(fast) == len(reference)
        for (labels, t, v), (labels_ref, t_ref, v_ref) in zip(fast, reference):
            assert labels == labels_ref
            assert np.array_equal(t, t_ref) and np.array_equal(v, v_ref, equal_nan=True)


@pytest.mark.parametrize(
    "body",
    [
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2"]]}], separators=(", ", ": ")),  # not compact
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2"]], "histograms": []}]),  # native histograms
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2", "3"]]}]),  # three numbers in a pair
        matrix([{"metric": {"instance": "a"}, "values": [[1, "abc"]]}]),  # not a number
        matrix(
            [{"metric": {"instance": "a"}, "values": []}, {"metric": {"instance": "b"}, "values": [[1, "2"]]}]
        ),
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2"], []]}]),  # an empty pair
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2"]]}])[:-1],  # truncated
        matrix([{"metric": {"instance": "a"}, "values": [[1, "2"]]}])[:-2] + ',"warnings":["w"]}',
        '{"status":"error","errorType":"bad_data","error":"parse error"}',
    ],
)
def test_bodies_of_any_other_shape_go_to_the_json_parser(body):
    assert prom.parse_matrix(body) is None
