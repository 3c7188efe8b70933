"""The fleet monitor (`zoo.monitor source=prometheus`) against an in-process fake query_range: it forecasts
every series, serves /metrics with the source labels, scores the next round's actuals, journals, and renders
rules Prometheus can load. The real stack: tests/prometheus/test_live.py (make test-prometheus)."""

from __future__ import annotations

import pandas as pd
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.tft.fakeprom import FakePrometheus
from zoo.core.errors import ZooError
from zoo.tft import fleetmonitor as F


@pytest.fixture(scope="module")
def model(multi_dm):
    import torch

    from zoo.tft.module import TFTModule

    torch.manual_seed(0)
    m = TFTModule(**multi_dm.model_kwargs(), net={"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4})  # fmt: skip
    m.eval()
    return m


def serve_fleet(fake, frame, spike_at=None):
    """The datamodule's hosts as node_exporter-style query results (instance, job, a label not every
    target has), read from `frame` by time; `spike_at` (unix s): cpu there is 1000."""
    index = frame.set_index(["series", "timestamp"])
    for t in ("cpu_percent", "memory_percent", "disk_percent", "load_average"):
        expr = f"q_{t}"

        def value(ts, host, t=t):
            key = (host, pd.Timestamp(ts, unit="s"))
            if key not in index.index:
                return None
            return (
                1000.0
                if (t == "cpu_percent" and spike_at is not None and ts == spike_at)
                else float(index.at[key, t])
            )

        extra = {"mountpoint": "/"} if t == "disk_percent" else {}
        fake.series[expr] = [({"instance": h, "job": "node", **extra}, lambda ts, h=h, f=value: f(ts, h))
                             for h in sorted(frame["series"].unique())]  # fmt: skip
    return {t: f"q_{t}" for t in ("cpu_percent", "memory_percent", "disk_percent", "load_average")}


def scrape(mon):
    text = requests.get(f"http://{mon.metrics_address}/metrics", timeout=5).text
    return {s.name: s for fam in text_string_to_metric_families(text) for s in fam.samples} | {
        "_all": [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    }


def test_rounds_forecast_publish_score_and_journal(multi_dm, model, tmp_path):
    frame = multi_dm.frame
    last = frame["timestamp"].max()
    end = last.timestamp() - 3 * 3600  # leave three steps to replay
    spike = end + 3600
    with FakePrometheus() as fake:
        queries = serve_fleet(fake, frame, spike_at=spike)
        mon = F.FleetMonitor(model, tmp_path / "mon", fake.url, queries, None, interval=1.0, publish_steps=2,
                             metrics_port=0, flush_every=100)  # fmt: skip
        try:
            assert mon.round(now=end + 1.5) and not mon.round(now=end + 2.0)  # no new step: no round
            samples = scrape(mon)["_all"]
            fc = [s for s in samples if s.name == "zoo_forecast"]
            assert len(fc) == 3 * 4 * 2  # series x targets x horizons
            one = next(s for s in fc if s.labels["instance"] == "host01" and s.labels["target"] == "cpu_percent"
                       and s.labels["horizon"] == "1")  # fmt: skip
            assert (
                one.labels["job"] == "node" and "mountpoint" not in one.labels
            )  # only labels all targets share
            lo = next(
                s
                for s in samples
                if s.name == "zoo_forecast_lower" and s.labels == {**one.labels, "band": "p2_p98"}
            )
            hi = next(
                s
                for s in samples
                if s.name == "zoo_forecast_upper" and s.labels == {**one.labels, "band": "p2_p98"}
            )
            # the values forecast() gives for the same history
            direct = model.forecast(mon.history(mon.last_end))
            row = direct[
                (direct["series"] == "host01") & (direct["target"] == "cpu_percent") & (direct["step"] == 1)
            ]
            assert one.value == pytest.approx(float(row["point"].iloc[0]), rel=1e-5)
            assert (lo.value, hi.value) == pytest.approx(
                (float(row["q0.02"].iloc[0]), float(row["q0.98"].iloc[0])), rel=1e-5
            )
            assert not [s for s in samples if s.name == "zoo_anomalous"]  # nothing scored yet
            assert mon.round(now=spike + 1.5)  # the spiked step's actuals arrive
            samples = scrape(mon)["_all"]
            flag = {
                (s.labels["instance"], s.labels["target"], s.labels["band"]): s.value
                for s in samples
                if s.name == "zoo_anomalous"
            }
            score = {
                (s.labels["instance"], s.labels["target"]): s.value
                for s in samples
                if s.name == "zoo_anomaly_score"
            }
            assert len(flag) == 3 * 4 * 2 and set(flag.values()) <= {0.0, 1.0}
            for h in ("host00", "host01", "host02"):
                assert flag[(h, "cpu_percent", "p2_p98")] == 1.0 and score[(h, "cpu_percent")] > 1
            actual = next(
                s
                for s in samples
                if s.name == "zoo_actual"
                and s.labels["instance"] == "host01"
                and s.labels["target"] == "cpu_percent"
            )
            assert actual.value == 1000.0
            rounds = next(s for s in samples if s.name == "zoo_monitor_rounds_total")
            assert rounds.value == 2 and mon.n_series == 3
        finally:
            mon.close()
    flags = pd.concat([pd.read_parquet(p) for p in (tmp_path / "mon" / "flags").glob("part-*.parquet")])
    cpu = flags[flags["target"] == "cpu_percent"]
    assert set(cpu["series"]) == {"host00", "host01", "host02"} and (cpu["side"] == "above").all()
    forecasts = pd.concat(
        [pd.read_parquet(p) for p in (tmp_path / "mon" / "forecasts").glob("part-*.parquet")]
    )
    assert len(forecasts) == 2 * 3 * 4 * 2 and {"q0.02", "q0.98", "point", "issued_at"} <= set(
        forecasts.columns
    )


def test_a_sigkilled_monitor_keeps_its_journal(tmp_path):
    journal = F.BatchJournal(tmp_path / "forecasts", ("issued_at", "timestamp"))
    rows = [
        {"issued_at": "2024-01-01T00:00:00", "timestamp": f"2024-01-01T00:0{k}:00", "point": k}
        for k in range(3)
    ]
    journal.extend(rows)  # fsync'ed; no flush, as if killed here
    again = F.BatchJournal(
        tmp_path / "forecasts", ("issued_at", "timestamp")
    )  # a restart rolls it into a part
    parts = list((tmp_path / "forecasts").glob("part-*.parquet"))
    assert again.pending() == [] and len(parts) == 1 and len(pd.read_parquet(parts[0])) == 3


def test_rules_render_with_hold_down_and_severity_by_band():
    rules = yaml.safe_load(F.rules_yaml("3m", 60))["groups"][0]["rules"]
    by = {r["alert"]: r for r in rules}
    assert by["ZooForecastBandWarning"]["expr"] == 'zoo_anomalous{band="p10_p90"} == 1'
    assert by["ZooForecastBandCritical"]["labels"] == {"severity": "critical"}
    assert all(r["for"] == "3m" for r in rules)
    assert "time() - zoo_monitor_last_round_timestamp_seconds > 600" == by["ZooForecastStale"]["expr"]
    assert F.prom_duration(3 * 60) == "180s" and F.prom_duration(0.2) == "1s"


def test_bad_settings_fail_in_one_line(model, tmp_path):
    with pytest.raises(ZooError, match="data.url=prom:9090: expected an http"):
        F.FleetMonitor(model, tmp_path, "prom:9090", metrics_port=None)
    with FakePrometheus() as fake:
        mon = F.FleetMonitor(model, tmp_path, fake.url, {"cpu_percent": "nothing"}, metrics_port=None)
        with pytest.raises(ZooError, match="no series has every target"):
            mon.round(now=1_700_000_000)
        mon.close()


def test_psutil_stays_the_default_source(compose):
    cfg = compose(config_name="monitor")
    assert cfg.source == "psutil" and cfg.metrics_host == "127.0.0.1" and cfg.metrics_port is None
