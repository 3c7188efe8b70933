"""(b) A live node_exporter scraped every second: the fleet monitor forecasts it from Prometheus, Prometheus
scrapes the monitor's /metrics, and PromQL finds the forecast and flag series with the source labels;
the rules file the monitor wrote passes `promtool check rules` and `promtool test rules`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import requests
from benchmarks import promstack

from tests.conftest import ROOT, run_cli


def train_second_model(tmp_path, instance):
    """A tiny TFT on generated hosts at a 1 s step (10 s of history -> 3 s), one of them named like the
    live node_exporter's instance, so the monitor can forecast it after ~15 s of scrapes."""
    from zoo.tft.sources import synthetic_hosts

    frame = synthetic_hosts(n_hosts=3, days=1, step_minutes=5, noise=1.0, seed=2)
    frame = frame[[c for c in frame.columns if not c.endswith("_clean")]]
    n = len(frame) // 3
    frame["timestamp"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.tile(np.arange(n), 3), unit="s")
    frame["series"] = frame["series"].map(
        {"host00": instance, "host01": "other:9100", "host02": "third:9100"}
    )
    path = tmp_path / "second.parquet"
    frame.rename(columns={"series": "host"}).to_parquet(path)
    run_dir = tmp_path / "run"
    proc = run_cli("zoo.train", "model=tft", "data=tft/file", f"data.path={path}", "data.step=1s", "data.max_gap=5s",
                   "data.encoder_length=10", "data.prediction_length=3", "data.season=1min", "data.num_workers=0",
                   "trainer=cpu", "trainer.max_steps=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                   "model.net.hidden_size=8", "model.net.hidden_continuous_size=4", "model.net.attention_head_size=1",
                   "model.plots=false", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}",
                   "callbacks.rich_progress_bar=null", "logger=none", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def query(url, expr):
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_monitor_forecasts_a_live_node_exporter_into_prometheus(tmp_path):
    out = tmp_path / "monitor"
    with promstack.node_exporter(tmp_path / "ne") as instance:
        run_dir = train_second_model(tmp_path, instance)
        metrics_port = promstack.free_port()
        scrape = [{"job": "node", "targets": [instance]},
                  {"job": "zoo", "targets": [f"127.0.0.1:{metrics_port}"], "honor_labels": True}]  # fmt: skip
        with promstack.prometheus(tmp_path / "prom", scrape=scrape, interval="1s") as url:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not query(url, "count_over_time(node_load1[1m]) > 14"):
                time.sleep(1)
            log = open(tmp_path / "monitor.log", "w")
            proc = subprocess.Popen(
                [sys.executable, "-m", "zoo.monitor", f"ckpt_path={run_dir}", "source=prometheus", f"url={url}",
                 f"metrics_port={metrics_port}", "interval=1", "duration=60", f"out={out}", "publish_steps=2",
                 "flush_every=5"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
            try:
                found = {}
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(found) < 3:
                    for name, expr in (("forecast", 'zoo_forecast{target="cpu_percent", horizon="1"}'),
                                       ("upper", 'zoo_forecast_upper{target="memory_percent", band="p2_p98"}'),
                                       ("flag", 'zoo_anomalous{target="load_average", band="p2_p98"}')):  # fmt: skip
                        result = query(url, expr)
                        if result:
                            found[name] = result[0]
                    time.sleep(1)
                assert len(found) == 3, (tmp_path / "monitor.log").read_text()[-3000:]
                for r in found.values():
                    assert r["metric"]["instance"] == instance and r["metric"]["job"] == "node"
                    assert np.isfinite(float(r["value"][1]))
                assert float(found["flag"]["value"][1]) in (0.0, 1.0)
                # the rules Prometheus would load for these series
                rules = out / "zoo-forecast.rules.yml"
                check = subprocess.run([promstack.binary("promtool"), "check", "rules", str(rules)],
                                       capture_output=True, text=True, timeout=60)  # fmt: skip
                assert check.returncode == 0, check.stdout + check.stderr
                assert "SUCCESS: 3 rules found" in check.stdout
            finally:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)  # the journal guarantee: nothing journaled is lost
                proc.wait(30)
                log.close()
    journaled = (out / "forecasts" / "pending.jsonl").read_text().splitlines()
    parts = list((out / "forecasts").glob("part-*.parquet"))
    rows = sum(len(pd.read_parquet(p)) for p in parts) + len(journaled)
    assert rows >= 2 * 4 * 2  # >= 2 rounds x 4 targets x 2 published steps
    assert json.loads(journaled[-1])["series"] == instance if journaled else parts


def test_rules_fire_on_a_flag_held_past_the_hold_down(tmp_path):
    """`promtool test rules`: an actual outside the P2-P98 band for longer than for: fires the critical alert
    with the source labels; one outside for a shorter time does not."""
    from zoo.tft.fleetmonitor import RULES_FILE, rules_yaml

    (tmp_path / RULES_FILE).write_text(rules_yaml("3m", 60))
    series = 'zoo_anomalous{band="p2_p98",instance="web1:9100",job="node",target="cpu_percent"}'
    short = 'zoo_anomalous{band="p2_p98",instance="web2:9100",job="node",target="cpu_percent"}'
    test = {
        "rule_files": [RULES_FILE],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": "0 0 1 1 1 1 1 1"},
                             {"series": short, "values": "0 0 1 1 0 0 0 0"},
                             {"series": "zoo_monitor_last_round_timestamp_seconds", "values": "0+60x8"}],
            "alert_rule_test": [
                {"eval_time": "7m", "alertname": "ZooForecastBandCritical", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "band": "p2_p98", "instance": "web1:9100", "job": "node",
                                   "target": "cpu_percent"},
                    "exp_annotations": {"summary": "cpu_percent of web1:9100 outside its forecast P2-P98 band",
                                        "description": "zoo.monitor's calibrated band for the latest step missed the actual for 3m; zoo_anomaly_score{target=\"cpu_percent\"} tells how far."}}]},
                {"eval_time": "3m", "alertname": "ZooForecastBandCritical", "exp_alerts": []},
            ],
        }],
    }  # fmt: skip
    import yaml

    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run([promstack.binary("promtool"), "test", "rules", "test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
