"""The TFT's live monitor over a fleet in Prometheus (``python -m zoo.monitor source=prometheus url=...``;
docs/prometheus.md): read every series' latest history from Prometheus instead of sampling this machine,
forecast them in batches, publish forecasts, bands and flags on ``/metrics`` for Prometheus to scrape, and
write an alerting rules file for them.

Every ``interval`` seconds, once a new step of the model's ``data.step`` has completed, one round:

1. one ``query_range`` per target (`zoo.tft.prometheus`, the node_exporter expressions unless
   ``queries=`` names others) over the model's encoder window up to the latest complete step;
2. the actuals of that step are scored against the forecasts made for it (``publish_steps`` rounds ago
   at most): outside the P2-P98 (or P10-P90) band is a flag, journaled in ``flags/``;
3. `zoo.tft.predict.forecast` forecasts all series, ``batch_size`` series per call; every row is journaled
   in ``forecasts/`` (one fsync per round) and the next ``publish_steps`` steps are published.

``/metrics`` (prometheus_client, on ``metrics_host:metrics_port``, 127.0.0.1 by default) carries, with
the source series' labels (those every target's result series of that id share) plus ``target``:
``zoo_forecast{horizon}`` (point), ``zoo_forecast_lower/upper{horizon, band="p10_p90"|"p2_p98"}``
(calibrated band edges), ``zoo_actual``, ``zoo_anomaly_score`` (distance of the actual from the median
in units of the P2-P98 half-band on its side: above 1 is outside the band, vmanomaly's convention) and
``zoo_anomalous{band}`` (1: outside that band), plus the monitor's own ``zoo_monitor_*`` series. Scrape it
with ``honor_labels: true`` so the forecast series keep the source ``instance`` and ``job``.

``out/zoo-forecast.rules.yml`` (`rules_yaml`) alerts on ``zoo_anomalous``: severity warning for the P10-P90
band, critical for P2-P98, each held down ``for:`` ``hold_down`` (default three model steps).

A SIGKILL loses no journaled row (the journals of `zoo.tft.collect`); a restart rolls them into parts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoo.core.errors import ZooError
from zoo.tft import prometheus as prom
from zoo.tft.collect import Journal, Stop

log = logging.getLogger("zoo.monitor")

RULES_FILE = "zoo-forecast.rules.yml"
BANDS = {"p10_p90": (0.1, 0.9), "p2_p98": (0.02, 0.98)}
SEVERITY = {"p10_p90": "warning", "p2_p98": "critical"}
DEFAULT_METRICS_PORT = 9477


class BatchJournal(Journal):
    """A `Journal` whose rows of one round are appended with one fsync."""

    def extend(self, rows: list[dict[str, Any]]) -> None:
        import json
        import os

        if not rows:
            return
        with open(self.journal, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            fh.flush()
            os.fsync(fh.fileno())


def prom_duration(seconds: float) -> str:
    return f"{max(1, int(math.ceil(seconds)))}s"


def rules_yaml(hold_down: str, interval_s: float) -> str:
    """The alerting rules (Prometheus 2 rule-file YAML) for the monitor's ``zoo_anomalous`` series, and one
    for a monitor that stopped publishing."""
    import yaml

    rules = []
    for band, (lo, hi) in BANDS.items():
        rules.append({
            "alert": f"ZooForecastBand{SEVERITY[band].capitalize()}",
            "expr": f'zoo_anomalous{{band="{band}"}} == 1',
            "for": hold_down,
            "labels": {"severity": SEVERITY[band]},
            "annotations": {
                "summary": f"{{{{ $labels.target }}}} of {{{{ $labels.instance }}}} outside its forecast P{lo * 100:g}-P{hi * 100:g} band",
                "description": "zoo.monitor's calibrated band for the latest step missed the actual for "
                f"{hold_down}; zoo_anomaly_score{{target=\"{{{{ $labels.target }}}}\"}} tells how far.",
            },
        })  # fmt: skip
    rules.append({
        "alert": "ZooForecastStale",
        "expr": f"time() - zoo_monitor_last_round_timestamp_seconds > {max(60, int(10 * interval_s))}",
        "for": hold_down,
        "labels": {"severity": "warning"},
        "annotations": {"summary": "zoo.monitor has published no forecast round for a while"},
    })  # fmt: skip
    return yaml.safe_dump({"groups": [{"name": "zoo-forecast", "rules": rules}]}, sort_keys=False)


class Snapshot:
    """The latest round's samples for ``/metrics``: a prometheus_client collector that yields them (stale
    series vanish when a round no longer has them)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.help = {
            "zoo_forecast": "Point forecast of target `horizon` steps after the latest complete step",
            "zoo_forecast_lower": "Lower edge of the calibrated forecast band",
            "zoo_forecast_upper": "Upper edge of the calibrated forecast band",
            "zoo_actual": "Latest actual scored against its forecast",
            "zoo_anomaly_score": "|actual - median| / P2-P98 half-band on its side (> 1: outside the band)",
            "zoo_anomalous": "1 when the latest actual is outside the band, else 0",
            "zoo_monitor_series": "Series forecast in the latest round",
            "zoo_monitor_round_seconds": "Seconds the latest round took (query, score, forecast, journal)",
            "zoo_monitor_rounds_total": "Rounds completed",
            "zoo_monitor_failed_rounds_total": "Rounds that failed (logged)",
            "zoo_monitor_last_round_timestamp_seconds": "Unix time of the latest completed round",
        }
        self.lock = threading.Lock()

    def replace(self, samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        with self.lock:
            self.samples = samples

    def collect(self) -> Any:
        from prometheus_client.core import Metric

        with self.lock:
            samples = self.samples
        for name, rows in samples.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            family = name.removesuffix("_total") if kind == "counter" else name
            m = Metric(family, self.help.get(name, name), kind)
            for labels, value in rows:
                m.add_sample(name, labels, float(value))
            yield m


class FleetMonitor:
    """Forecast every series a Prometheus server holds for the model's targets (module docstring)."""

    def __init__(self, module: Any, out: str | Path, url: str, queries: dict[str, str] | None = None,
                 series_labels: list[str] | None = None, interval: float = 10.0, publish_steps: int = 1,
                 batch_size: int = 256, metrics_port: int | None = DEFAULT_METRICS_PORT,
                 metrics_host: str = "127.0.0.1", flush_every: int = 60, hold_down: str | None = None) -> None:  # fmt: skip
        if not url:
            raise ZooError(
                "source=prometheus needs url=<the Prometheus server>, e.g. url=http://127.0.0.1:9090"
            )
        spec = module.preprocess
        self.module = module
        self.out = Path(out)
        self.targets = list(spec["targets"])
        self.step = pd.Timedelta(spec["step"])
        self.step_s = self.step.total_seconds()
        self.interval = float(interval)
        self.publish_steps = max(1, min(int(publish_steps), module.prediction_length))
        self.batch_size = max(1, int(batch_size))
        self.flush_every = max(1, int(flush_every))
        warmup = max([*(spec.get("lags") or []), *(spec.get("rolling") or []), 0])
        self.needed = module.encoder_length + warmup
        self.source = prom.make_source(url, queries, self.targets, 0, self.step_s * 2, spec["step"],
                                       series_labels, {"parallel": len(self.targets), "retries": 1,
                                                       "timeout": max(5.0, 3 * self.interval)})  # fmt: skip
        self.levels = {f"q{v:g}": v for v in module.quantiles}
        have = {round(v, 9) for v in module.quantiles}
        self.bands = {b: (f"q{lo:g}", f"q{hi:g}") for b, (lo, hi) in BANDS.items() if {lo, hi} <= have}
        if "p2_p98" not in self.bands:
            raise ZooError(
                f"model.quantiles={module.quantiles}: the fleet monitor's flags need 0.02 and 0.98"
            )
        self.hold_down = hold_down or prom_duration(3 * self.step_s)
        self.forecasts = BatchJournal(self.out / "forecasts", ("issued_at", "timestamp"))
        self.flags = BatchJournal(self.out / "flags", ("timestamp", "issued_at"))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / RULES_FILE).write_text(rules_yaml(self.hold_down, self.interval))
        self.pending: dict[tuple[str, str, pd.Timestamp], dict[str, Any]] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.last_end: float | None = None
        self.counts = {"rounds": 0, "failed": 0, "forecasts": 0, "flags": 0}
        self.round_seconds = float("nan")
        self.n_series = 0
        self.last_round = 0.0
        self.published: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.scored: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.snapshot = Snapshot()
        self.server = None
        self.metrics_address = None
        if metrics_port is not None:
            self._serve(metrics_host, int(metrics_port))
        self._pool = ThreadPoolExecutor(max_workers=len(self.targets))
        self._sessions = threading.local()
        self._labels_lock = threading.Lock()
        self.errors: set[str] = set()

    # -- /metrics --------------------------------------------------------------------------------------------
    def _serve(self, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.snapshot)
        try:
            self.server, self._server_thread = start_http_server(port, addr=host, registry=registry)
        except OSError as err:
            raise ZooError(
                f"metrics_port={port}: cannot listen on {host}:{port} ({err.strerror or err})"
            ) from err
        self.metrics_address = f"{host}:{self.server.server_port}"

    def close(self) -> None:
        self.flush()
        self._pool.shutdown(wait=False)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def flush(self) -> None:
        self.forecasts.flush()
        self.flags.flush()

    # -- one round -------------------------------------------------------------------------------------------
    def _query(self, target: str, first: float, last: float) -> pd.DataFrame:
        if not hasattr(self._sessions, "s"):
            self._sessions.s = prom._session()
        expr = self.source.queries[target]
        result = prom.query_range(self._sessions.s, self.source, expr, first, last, target)
        frame = prom.result_frame(result, self.source, target, expr)
        with self._labels_lock:  # the labels every target's series of one id share (targets run in threads)
            for labels, _, _ in result:
                metric = {k: str(v) for k, v in labels.items() if k != "__name__"}
                sid = ",".join(str(metric.get(lb, "")) for lb in self.source.series_labels)
                known = self.labels.get(sid)
                self.labels[sid] = (
                    metric if known is None else {k: v for k, v in known.items() if metric.get(k) == v}
                )
        frame["series"] = frame["series"].astype(object)  # targets' categories differ; merged below
        return frame.rename(columns={"value": target})[["series", "time", target]]

    def history(self, end: float) -> pd.DataFrame:
        """Every series' last `needed` + 1 steps up to `end` (unix seconds), all targets, as the zoo's frame."""
        first = end - (self.needed + 1) * self.step_s
        self.labels = {}
        parts = list(self._pool.map(lambda t: self._query(t, first, end), self.targets))
        wide = parts[0]
        for part in parts[1:]:
            wide = wide.merge(part, on=["series", "time"], how="inner")
        wide = wide.dropna()
        wide["timestamp"] = pd.to_datetime(wide.pop("time"), unit="s")
        return wide.sort_values(["series", "timestamp"], kind="stable").reset_index(drop=True)

    def round(self, now: float | None = None) -> bool:
        """One round if a new step has completed since the last (True), else nothing (False)."""
        now = time.time() if now is None else now
        end = math.floor((now - 1.0) / self.step_s) * self.step_s  # the latest step the server has scraped
        if self.last_end is not None and end <= self.last_end:
            return False
        t0 = time.perf_counter()
        frame = self.history(end)
        if frame.empty:
            raise ZooError(
                f"url={self.source.url}: no series has every target ({', '.join(self.targets)}) at the latest steps"
            )
        self._score(frame)
        latest = frame.groupby("series", sort=True)["timestamp"].transform("max") == frame["timestamp"].max()
        frame = frame[frame["series"].isin(frame.loc[latest, "series"])]  # series still reporting
        fc = self._forecast(frame)
        self.n_series = int(fc["series"].nunique())
        self._publish(fc, end)
        self.last_end = end
        self.round_seconds = time.perf_counter() - t0
        self.last_round = time.time()
        self.counts["rounds"] += 1
        self._snapshot()
        if self.counts["rounds"] % self.flush_every == 0:
            self.flush()
        return True

    def _forecast(self, frame: pd.DataFrame) -> pd.DataFrame:
        series = frame["series"].unique()
        out = []
        for lo in range(0, len(series), self.batch_size):
            batch = frame[frame["series"].isin(series[lo : lo + self.batch_size])]
            out.append(self.module.forecast(batch, where=f"url={self.source.url}"))
        return pd.concat(out, ignore_index=True)

    def _labels(self, series: str, **extra: str) -> dict[str, str]:
        base = dict(self.labels.get(series) or dict(zip(self.source.series_labels, series.split(","))))
        return {**base, **extra}

    def _publish(self, fc: pd.DataFrame, end: float) -> None:
        issued = pd.Timestamp(end, unit="s")  # the latest step the forecasts start after
        fc = fc[fc["step"] <= self.publish_steps]
        rows = fc.to_dict("records")
        journal, published = [], {"zoo_forecast": [], "zoo_forecast_lower": [], "zoo_forecast_upper": []}
        for r in rows:
            ts = pd.Timestamp(r["timestamp"])
            labels = self._labels(r["series"], target=r["target"], horizon=str(int(r["step"])))
            published["zoo_forecast"].append((labels, r["point"]))
            for band, (lo, hi) in self.bands.items():
                published["zoo_forecast_lower"].append(({**labels, "band": band}, r[lo]))
                published["zoo_forecast_upper"].append(({**labels, "band": band}, r[hi]))
            self.pending[(r["series"], r["target"], ts)] = r
            journal.append({"issued_at": issued.isoformat(), "timestamp": ts.isoformat(), "series": r["series"],
                            "target": r["target"], "step": int(r["step"]), "point": float(r["point"]),
                            **{c: float(r[c]) for c in self.levels}})  # fmt: skip
        self.forecasts.extend(journal)
        self.published = published
        self.counts["forecasts"] += 1

    def _score(self, frame: pd.DataFrame) -> None:
        """The actuals of forecast steps now in `frame`: anomaly score, band flags, the flags journal. One
        vectorised pass over every due forecast (a lookup per forecast was half of a 500-series round)."""
        if not self.pending:
            return
        newest = frame["timestamp"].max()
        due = [k for k in self.pending if k[2] <= newest]
        if not due:
            return
        fc = pd.DataFrame([self.pending.pop(k) for k in due])
        fc["series"], fc["target"] = [k[0] for k in due], [k[1] for k in due]
        fc["timestamp"] = pd.DatetimeIndex([k[2] for k in due])
        actuals = frame.melt(["series", "timestamp"], self.targets, var_name="target", value_name="actual")
        # A forecast step without a sample (a pause) is left unscored.
        m = fc.merge(actuals, on=["series", "timestamp", "target"], how="inner")
        if m.empty:
            return
        actual = m["actual"].to_numpy(np.float64)
        lo2, hi2 = (m[c].to_numpy(np.float64) for c in self.bands["p2_p98"])
        mid = m["q0.5" if "q0.5" in m else "point"].to_numpy(np.float64)
        half = np.where(actual >= mid, hi2 - mid, mid - lo2)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(half > 0, np.abs(actual - mid) / half, np.where(actual == mid, 0.0, np.inf))
        outside = {  # `not (lo <= actual <= hi)`: a NaN edge counts as outside
            b: (~((m[lo].to_numpy(np.float64) <= actual) & (actual <= m[hi].to_numpy(np.float64)))).astype(
                np.float64
            )
            for b, (lo, hi) in self.bands.items()
        }
        m["score"] = score
        flagged = m[outside["p2_p98"] > 0]
        flags = [
            {"timestamp": ts.isoformat(), "series": series, "target": target, "step": int(step),
             "issued_at": (ts - self.step * int(step)).isoformat(), "actual": float(a), "point": float(point),
             "lo": float(lo), "hi": float(hi), "score": float(sc), "side": "above" if a > hi else "below",
             "band": "p2_p98"}
            for ts, series, target, step, a, point, lo, hi, sc in zip(
                flagged["timestamp"], flagged["series"], flagged["target"], flagged["step"], flagged["actual"],
                flagged["point"], flagged[self.bands["p2_p98"][0]], flagged[self.bands["p2_p98"][1]], flagged["score"],
            )
        ]  # fmt: skip
        self.flags.extend(flags)
        self.counts["flags"] += len(flags)
        # The gauges show each (series, target)'s latest scored step.
        last = m.assign(**{f"out_{b}": v for b, v in outside.items()}).sort_values("timestamp", kind="stable")
        last = last.groupby(["series", "target"], sort=True).tail(1).sort_values(["series", "target"])
        scored: dict[str, list[tuple[dict[str, str], float]]] = {
            "zoo_actual": [],
            "zoo_anomaly_score": [],
            "zoo_anomalous": [],
        }
        for row in last.itertuples(index=False):
            labels = self._labels(row.series, target=row.target)
            scored["zoo_actual"].append((labels, float(row.actual)))
            scored["zoo_anomaly_score"].append((labels, float(row.score)))
            scored["zoo_anomalous"] += [
                ({**labels, "band": b}, float(getattr(row, f"out_{b}"))) for b in self.bands
            ]
        self.scored = scored

    def _snapshot(self) -> None:
        own = {
            "zoo_monitor_series": [({}, float(self.n_series))],
            "zoo_monitor_round_seconds": [({}, self.round_seconds)],
            "zoo_monitor_rounds_total": [({}, float(self.counts["rounds"]))],
            "zoo_monitor_failed_rounds_total": [({}, float(self.counts["failed"]))],
            "zoo_monitor_last_round_timestamp_seconds": [({}, self.last_round)],
        }
        self.snapshot.replace({**self.published, **self.scored, **own})

    # -- loop ------------------------------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> dict[str, int]:
        with Stop(duration) as stop:
            try:
                while not stop():
                    self._round_or_log()
                    stop.sleep_until(time.monotonic() + self.interval)
            except KeyboardInterrupt:
                pass
            finally:
                self.close()
        return dict(self.counts)

    def _round_or_log(self) -> None:
        """One round; a failed one (server down, short history) is counted and logged once per kind, and
        the monitor goes on."""
        try:
            self.round()
            if self.errors:
                log.info("[zoo] monitor: rounds work again")
                self.errors.clear()
        except Exception as err:
            self.counts["failed"] += 1
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            kind = f"{type(err).__name__}: {msg}"[:200]
            if kind not in self.errors:
                self.errors.add(kind)
                log.warning("[zoo] monitor: round failed (%s); it goes on", kind)
            self._snapshot()


def watch_fleet(module: Any, s: Any, out: str, what: str) -> dict[str, int]:
    """`python -m zoo.monitor source=prometheus ...` (`zoo.tft.monitor.watch`): run until duration= or a signal."""
    from omegaconf import DictConfig, OmegaConf

    def plain(value: Any) -> Any:
        return (
            OmegaConf.to_container(value)
            if isinstance(value, DictConfig | type(OmegaConf.create([])))
            else value
        )

    port = DEFAULT_METRICS_PORT if s.metrics_port is None else int(s.metrics_port)
    mon = FleetMonitor(module, out, s.url, plain(s.queries), plain(s.series_labels), s.interval, s.publish_steps,
                       s.batch_size, port, s.metrics_host, s.flush_every, s.hold_down)  # fmt: skip
    print(f"[zoo] monitor: {what} over {mon.source.url} ({', '.join(mon.targets)}), every {mon.interval:g} s; "
          f"/metrics on http://{mon.metrics_address}/metrics; rules in {mon.out / RULES_FILE}", flush=True)  # fmt: skip
    counts = mon.run(s.duration)
    print(f"[zoo] monitor: {counts['rounds']} rounds ({counts['failed']} failed), {counts['flags']} flags in {mon.out}", flush=True)  # fmt: skip
    return counts
