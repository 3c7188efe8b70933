"""The TFT family's live monitor (`python -m zoo.monitor export=<run>/export`, or ``ckpt_path=<checkpoint |
run folder>``; `TFTModule.watch`): forecast this machine as its metrics arrive.

    python -m zoo.monitor export=logs/train/runs/<run>/export interval=10 forecast_every=6 out=data/monitor/me
    python -m zoo.monitor ckpt_path=logs/train/runs/<run> duration=3600

Every ``interval`` seconds the psutil sampler of `zoo.tft.collect` samples cpu, memory, disk, load (and
swap, disk/network rates); every ``forecast_every`` samples the exported TFT forecasts the next
``prediction_length`` steps from the latest ``history`` samples (`zoo.tft.predict.forecast`: resampled
to the model's ``data.step``, point + calibrated quantiles). When a forecast step's time bin is complete,
its actual (the mean of the samples in the bin, as training resampled them) is compared with every
forecast made for it: outside its P2-P98 band, it is a flag, kept with the horizon it was forecast at.

Under ``out`` three folders of Parquet parts, each written like `zoo.collect`'s (every row appended to an
fsync'ed ``pending.jsonl`` first, rolled into a part every ``flush_every`` samples and on exit):
``samples/`` (the collector's columns), ``forecasts/`` (issued_at, timestamp = the step forecast, host,
target, step, point, q<level>...) and ``flags/`` (timestamp, host, target, step, issued_at, actual, point,
lo, hi, side). A SIGKILL loses no journaled row; a restart turns the journals into parts, reloads the
recent samples as history and the forecasts still waiting for their actuals, and continues the same
folders. A forecast that fails (history still too short, a model trained on other columns) is logged once
per kind of failure and collection goes on.

The bands follow this machine (``recalibrate``, on by default): once a forecast's whole horizon has been
observed, its scaled residuals (`zoo.tft.calibrate.scaled_residuals`, from the network's own quantiles)
join the latest ``recalibrate`` per target, and from ``recalibrate_min`` of them on, each target's shift
table is refitted from them before every forecast (the walk-forward calibration `zoo.eval` scores as
``*_rolling``), read at levels each matured forecast nudges by how far its issued bands missed their
nominal coverage (adaptive conformal, `zoo.tft.calibrate.ADAPT_RATE`); before that, the table the
model was exported with. The refitted table (shifts and levels) is kept in
``out/calibration.json`` and a restart goes on from it.

``duration=`` (seconds) or Ctrl-C/SIGTERM stops it. A live table (rich) shows the latest sample, the next
step's forecast and band, and the latest flags.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.core.errors import ZooError
from zoo.tft.collect import Collector, Journal, SamplingSettings, Stop, check_sampling, read, settings_of

log = logging.getLogger("zoo.monitor")

SAMPLES, FORECASTS, FLAGS = "samples", "forecasts", "flags"


@dataclass
class MonitorSettings(SamplingSettings):
    """`python -m zoo.monitor` (conf/monitor.yaml states the same defaults; tests/tft/test_configs.py keeps
    them equal). The one source of the monitor's defaults: `Monitor` and `watch` take theirs from here."""

    forecast_every: int = 6
    """Forecast every N samples."""
    history: int | None = None
    """Samples a forecast reads (None: enough for the model's encoder_length steps of data.step, plus the
    lag/rolling warm-up)."""
    duration: float | None = None
    """Seconds to run (None: until Ctrl-C or SIGTERM)."""
    live: str | bool = "auto"
    """The live terminal table: auto (when stdout is a terminal), true, false."""
    recalibrate: int = 500
    """Refit the bands from the latest N matured forecasts per target (0: keep the exported table)."""
    recalibrate_min: int = 50
    """Matured forecasts per target before the first refit."""
    source: str = "psutil"
    """What to forecast: psutil (this machine) or prometheus (every series at url=; zoo.tft.fleetmonitor)."""
    url: str | None = None
    """source=prometheus: the Prometheus server to read, e.g. http://127.0.0.1:9090."""
    queries: dict[str, str] | None = None
    """source=prometheus: target -> PromQL (None: node_exporter defaults, zoo.tft.prometheus.DEFAULT_QUERIES)."""
    series_labels: list[str] | None = None
    """source=prometheus: labels identifying a series (None: [instance])."""
    metrics_port: int | None = None
    """source=prometheus: port of /metrics (None: 9477; 0: any free port)."""
    metrics_host: str = "127.0.0.1"
    """source=prometheus: address /metrics listens on (0.0.0.0 exposes it beyond this machine)."""
    publish_steps: int = 1
    """source=prometheus: forecast steps published on /metrics (horizon label 1..N)."""
    batch_size: int = 256
    """source=prometheus: series per forecast call."""
    hold_down: str | None = None
    """source=prometheus: the alert rules' for: (None: three model steps)."""


DEFAULTS = MonitorSettings()


def _naive(ts: Any) -> Any:
    """A UTC timestamp without its zone (how the Parquet parts hold them)."""
    import pandas as pd

    ts = pd.Timestamp(ts)
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


def _iso(ts: Any) -> str:
    return _naive(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _band(levels: list[float]) -> tuple[str, str]:
    """The forecast columns a flag's band spans: P2-P98, else the model's outermost quantiles (warned)."""
    lo = next((v for v in levels if abs(v - 0.02) < 1e-9), levels[0])
    hi = next((v for v in levels if abs(v - 0.98) < 1e-9), levels[-1])
    band = (f"q{lo:g}", f"q{hi:g}")
    if abs(lo - 0.02) > 1e-9 or abs(hi - 0.98) > 1e-9:
        log.warning("[zoo] monitor: the model has no P2/P98 quantiles; flags use its %s-%s band", *band)
    return band


class Recalibration:
    """The walk-forward calibration (``recalibrate``, module docstring): the forecasts still maturing, the
    latest scaled residuals per target, and the table the forecasts apply (``module.calibration``), refitted
    from those residuals and kept in ``out/calibration.json``."""

    def __init__(self, module: Any, out: Path, window: int, minimum: int, spacing: float) -> None:
        import copy

        self.module, self.out = module, out
        self.window, self.minimum = window, max(2, minimum)
        # Each matured forecast moves the levels; `zoo.eval` moves them once a quarter horizon, so scale the
        # rate by how many of those one forecast spacing (in model steps) covers (the same reaction per hour
        # of data).
        self.adapt_scale = min(1.0, spacing / max(1, module.prediction_length // 4))
        self.bands = self._kept(copy.deepcopy(module.calibration))
        module.calibration = self.bands
        self.residuals: dict[str, deque] = {}
        self.open: dict[tuple[str, str], dict[str, Any]] = {}  # (issued_at, target) -> raw quantiles, actuals
        self.refits = 0

    @classmethod
    def of(cls, module: Any, out: Path, window: int, minimum: int, spacing: float) -> Recalibration | None:
        """None when off: ``recalibrate=0``, or a model exported without a table."""
        if window <= 0 or module.calibration is None:
            return None
        return cls(module, out, window, minimum, spacing)

    def _kept(self, bands: Any) -> Any:
        """A restart goes on from the last refitted table (out/calibration.json), else `bands`."""
        try:
            table = type(bands).load_json(self.out)
            if table is not None:
                m = self.module
                table.check(m.quantiles, m.target_names, m.prediction_length, str(self.out))
                return table
        except ZooError as err:
            log.warning("[zoo] monitor: the refitted calibration in %s is not used (%s)", self.out, err)
        return bands

    def open_forecast(self, fc: Any, issued: str) -> None:
        """Keep a forecast's raw quantiles (and its bands as issued) until its whole horizon is observed."""
        import numpy as np

        levels = [f"raw_q{v:g}" for v in self.module.quantiles]
        issued_bands = [f"q{v:g}" for v in self.module.quantiles]
        if not set(levels) <= set(fc.columns):
            return
        has_issued = set(issued_bands) <= set(fc.columns)
        for target, part in fc.groupby("target", sort=False):
            part = part.sort_values("step")
            raw = part[levels].to_numpy(np.float64)
            self.open[(issued, str(target))] = {
                "raw": raw,
                # The calibrated bands as forecast: what the levels adapt to (`Calibration.adapt`).
                "issued": part[issued_bands].to_numpy(np.float64) if has_issued else None,
                "actual": np.full(len(raw), np.nan),
                "left": len(raw),
            }

    def settle(self, f: dict[str, Any], target: str, actual: float | None) -> None:
        """One forecast step's actual (None: none came); a forecast whose every step has one matures."""
        import numpy as np

        key = (_iso(f["issued_at"]), target)
        entry = self.open.get(key)
        if entry is None:
            return
        entry["actual"][int(f["step"]) - 1] = np.nan if actual is None else actual
        entry["left"] -= 1
        if entry["left"] > 0:
            return
        del self.open[key]
        if self.bands.row(target) is not None and np.isfinite(entry["actual"]).all():
            self._mature(target, entry)

    def _mature(self, target: str, entry: dict[str, Any]) -> None:
        """A fully observed forecast: its residuals join the target's window, its misses nudge the levels,
        and from `minimum` residuals on the target's table is refitted."""
        import torch

        _, sd = (self.module.preprocess.get("scaler") or {}).get(target, (0.0, 1.0))
        q, y = torch.from_numpy(entry["raw"])[None], torch.from_numpy(entry["actual"])[None]
        r = self.bands.residuals(target, q, y, float(sd))[0]  # in the data's units, not the model's
        window = self.residuals.setdefault(target, deque(maxlen=self.window))
        window.append(r.float())
        if entry["issued"] is not None:
            below = torch.from_numpy(entry["actual"][:, None] <= entry["issued"])[None]
            self.bands.adapt(target, below, self.adapt_scale)
        if len(window) >= self.minimum:
            self._refit(target, window)

    def _refit(self, target: str, window: deque) -> None:
        import torch

        if self.refits == 0:
            log.info(
                "[zoo] monitor: bands now refitted from this machine's %d matured forecasts", len(window)
            )
        self.bands.refit(target, torch.stack(list(window)))
        self.refits += 1
        try:
            self.bands.save_json(self.out)
        except OSError as err:  # the journals matter more than this table
            log.warning("[zoo] monitor: could not keep the refitted calibration: %s", err)


class Flagger:
    """The forecasts waiting for their actuals, by (bin start, target). Once a bin is complete, the mean of
    its samples (as training resampled them) is the actual of every forecast made for it: each is settled
    with the recalibration, and journaled as a flag when the actual is outside its band."""

    def __init__(self, journal: Journal, host: str, step: Any, band: tuple[str, str],
                 recalibration: Recalibration | None) -> None:  # fmt: skip
        self.journal, self.host, self.step, self.band = journal, host, step, band
        self.recalibration = recalibration
        self.pending: dict[tuple[Any, str], list[dict[str, Any]]] = {}
        self.latest: deque[dict[str, Any]] = deque(maxlen=5)
        self.count = 0

    def expect(self, row: dict[str, Any]) -> None:
        key = (_naive(row["timestamp"]), str(row["target"]))
        self.pending.setdefault(key, []).append(row)

    def check(self, recent: deque[dict[str, Any]]) -> None:
        """Bins before the newest sample's are complete: score every forecast made for them."""
        if not self.pending:
            return
        now_bin = recent[-1]["timestamp"].floor(self.step)
        ready = [k for k in self.pending if k[0] < now_bin]
        if not ready:
            return
        import pandas as pd

        frame = pd.DataFrame(list(recent))
        bins = frame["timestamp"].dt.floor(self.step)
        for key in sorted(ready):
            start, target = key
            rows = self.pending.pop(key)
            values = frame.loc[bins == start, target].dropna() if target in frame.columns else frame[[]]
            actual = float(values.mean()) if len(values) else None  # None: no sample in that bin (a pause)
            if self.recalibration is not None:
                for f in rows:
                    self.recalibration.settle(f, target, actual)
            if actual is not None:
                for f in rows:
                    self._score(f, start, target, actual)

    def _score(self, f: dict[str, Any], start: Any, target: str, actual: float) -> None:
        lo_col, hi_col = self.band
        lo, hi = float(f[lo_col]), float(f[hi_col])
        if lo <= actual <= hi:
            return
        flag = {"timestamp": _iso(start), "host": self.host, "target": target, "step": int(f["step"]),
                "issued_at": _iso(f["issued_at"]), "actual": actual, "point": float(f["point"]), "lo": lo,
                "hi": hi, "side": "above" if actual > hi else "below", "band": f"{lo_col}-{hi_col}"}  # fmt: skip
        self.journal.append(flag)
        self.latest.append(flag)
        self.count += 1


def live_table(mon: Monitor) -> Any:
    """The live display (rich): per target the latest sample, the next step's forecast and band, the last
    flag; the counts in the caption."""
    from rich.table import Table

    latest = mon.recent[-1] if mon.recent else {}
    c = mon.counts
    caption = (f"{c['samples']} samples, {c['forecasts']} forecasts ({c['failed']} failed), {c['flags']} flags "
               f"-> {mon.out}")  # fmt: skip
    if mon.errors:
        caption += f"\nlast forecast error: {sorted(mon.errors)[-1][:120]}"
    t = Table(title=f"zoo.monitor {mon.collector.host}", caption=caption)
    lo, hi = mon.band
    for col in ("target", "latest", "next step", "forecast", f"band {lo}-{hi}", "last flag"):
        t.add_column(col)
    flags = {f["target"]: f for f in mon.flagger.latest}
    for target in mon.targets:
        f, g, value = mon.latest_forecast.get(target), flags.get(target), latest.get(target)
        t.add_row(target, f"{value:.2f}" if isinstance(value, float) else "-",
                  f["timestamp"][11:23] if f else "-", f"{f['point']:.2f}" if f else "-",
                  f"{f[lo]:.2f} .. {f[hi]:.2f}" if f else "-",
                  f"{g['actual']:.2f} {g['side']} (h={g['step']}) at {g['timestamp'][11:19]}" if g else "-")  # fmt: skip
    return t


class Monitor:
    """Sampling and forecasting for one machine, into the three journaled folders under `out`; the flags
    come from its `Flagger`, the bands' refits from its `Recalibration`."""

    def __init__(self, module: Any, out: str | Path, interval: float = DEFAULTS.interval,
                 forecast_every: int = DEFAULTS.forecast_every, history: int | None = DEFAULTS.history,
                 host: str | None = DEFAULTS.host, disk_path: str = DEFAULTS.disk_path,
                 flush_every: int = DEFAULTS.flush_every, recalibrate: int = DEFAULTS.recalibrate,
                 recalibrate_min: int = DEFAULTS.recalibrate_min) -> None:  # fmt: skip
        import pandas as pd

        self.module, self.out = module, Path(out)
        self.interval, self.forecast_every, self.flush_every = (
            float(interval),
            int(forecast_every),
            int(flush_every),
        )
        spec = module.preprocess
        self.step, self.step_name = pd.Timedelta(spec["step"]), str(spec["step"])
        self.max_gap = max(pd.Timedelta(spec.get("max_gap") or spec["step"]), self.step)
        self.targets = list(spec["targets"])
        self.band = _band(list(module.quantiles))
        warmup = max([*(spec.get("lags") or []), *(spec.get("rolling") or []), 0])
        # Enough samples for encoder_length complete bins (+ the lag/rolling warm-up and the bin in progress).
        self.needed_steps = module.encoder_length + warmup
        steps = self.needed_steps + 2
        self.history = (
            int(history) if history else math.ceil(steps * self.step.total_seconds() / self.interval) + 4
        )
        self.collector = Collector(self.out / SAMPLES, host=host, disk_path=disk_path)
        self.forecasts = Journal(self.out / FORECASTS, ("issued_at", "timestamp"))
        self.flags = Journal(self.out / FLAGS, ("timestamp", "issued_at"))
        self.recent: deque[dict[str, Any]] = deque(maxlen=self.history)
        self.errors: set[str] = set()
        self.tally = {"samples": 0, "forecasts": 0, "failed": 0}
        self.latest_forecast: dict[str, dict[str, Any]] = {}
        spacing = self.forecast_every * self.interval / self.step.total_seconds()  # in model steps
        self.recalibration = Recalibration.of(
            module, self.out, int(recalibrate), int(recalibrate_min), spacing
        )
        self.flagger = Flagger(self.flags, self.collector.host, self.step, self.band, self.recalibration)
        self._resume()

    @property
    def counts(self) -> dict[str, int]:
        """samples, forecasts, flags, failed (forecasts), and refits when the bands are refitted."""
        t = self.tally
        counts = {"samples": t["samples"], "forecasts": t["forecasts"], "flags": self.flagger.count,
                  "failed": t["failed"]}  # fmt: skip
        if self.recalibration is not None:
            counts["refits"] = self.recalibration.refits
        return counts

    # The recalibration's state, as a monitor's (None when the bands are not refitted).
    bands = property(lambda self: self.recalibration.bands if self.recalibration else None)
    residuals = property(lambda self: self.recalibration.residuals)
    adapt_scale = property(lambda self: self.recalibration.adapt_scale)

    def _open_forecasts(self, fc: Any, issued: str) -> None:
        self.recalibration.open_forecast(fc, issued)

    def _settle(self, f: dict[str, Any], target: str, actual: float | None) -> None:
        self.recalibration.settle(f, target, actual)

    def _expect(self, row: dict[str, Any]) -> None:
        self.flagger.expect(row)

    # -- restart -----------------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Reload the newest samples (history) and the forecasts whose step has not completed yet."""
        import pandas as pd

        samples = read(self.out / SAMPLES)
        if len(samples):
            samples = samples[samples["host"] == self.collector.host] if "host" in samples else samples
            for row in samples.tail(self.history).to_dict("records"):
                row["timestamp"] = _naive(row["timestamp"])
                self.recent.append(row)
        if not self.recent:
            return
        done = self._bin(self.recent[-1]["timestamp"])  # bins before this one are complete
        parts = sorted((self.out / FORECASTS).glob("part-*.parquet"))[-3:]
        frames = [pd.read_parquet(p) for p in parts]
        if frames:
            old = pd.concat(frames, ignore_index=True)
            for row in old[old["timestamp"] >= done].to_dict("records"):
                self.flagger.expect(row)

    # -- one sample ----------------------------------------------------------------------------------------
    def _bin(self, ts: Any) -> Any:
        return ts.floor(self.step)

    def sample(self) -> dict[str, Any]:
        """Sample, journal (fsync) and check the bins this sample completed; forecast when it is time."""

        row = self.collector.sample()
        self.collector.append(row)  # durable before anything else can fail
        row = dict(row, timestamp=_naive(row["timestamp"]))
        self.recent.append(row)
        self.tally["samples"] += 1
        self.flagger.check(self.recent)
        if self.tally["samples"] % self.forecast_every == 0:
            self.forecast()
        if self.tally["samples"] % self.flush_every == 0:
            self.flush()
        return row

    # -- forecasts -----------------------------------------------------------------------------------------
    def _frame(self) -> Any:
        import pandas as pd

        frame = pd.DataFrame(list(self.recent))
        frame = frame.sort_values("timestamp").reset_index(drop=True)
        # Only complete bins: the bin in progress would enter the encoder as a partial mean.
        frame = frame[frame["timestamp"] < self._bin(frame["timestamp"].iloc[-1])]
        if len(frame) > 1:  # the last stretch without a gap the model's data.max_gap would split at
            gaps = frame["timestamp"].diff() > self.max_gap
            if gaps.any():
                frame = frame[gaps.cumsum() == gaps.cumsum().iloc[-1]]
        frame = frame.assign(series=frame["host"])
        return frame.reset_index(drop=True)

    def _history(self) -> Any:
        """The recent complete steps a forecast reads; too few is a `ZooError`."""
        frame = self._frame()
        steps = frame["timestamp"].dt.floor(self.step).nunique() if len(frame) else 0
        if steps < self.needed_steps:  # one message however short, so it is logged once
            raise ZooError(f"history too short: {steps} complete steps of {self.step_name}, the model needs "
                           f"{self.needed_steps} (encoder_length + lag warm-up; history={self.history} samples)")  # fmt: skip
        return frame

    def forecast(self) -> Any:
        """Forecast the next steps from the recent history; a failure is logged once per kind."""
        try:
            frame = self._history()
            fc = self.module.forecast(frame, raw_quantiles=self.recalibration is not None)
            last = self._bin(frame["timestamp"].iloc[-1])
        except Exception as err:  # a failing forecast must never stop the collection
            self._failed(err)
            return None
        if self.errors:
            log.info("[zoo] monitor: forecasts work again")
            self.errors.clear()
        self._issue(fc, last)
        self.tally["forecasts"] += 1
        return fc

    def _failed(self, err: Exception) -> None:
        """Count a failed forecast; log it when it is the first of its kind (numbers aside) in a row."""
        self.tally["failed"] += 1
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kind = re.sub(r"\d+(\.\d+)?", "#", f"{type(err).__name__}: {msg}")
        if kind not in self.errors:
            self.errors.add(kind)
            log.warning(
                "[zoo] monitor: forecast failed (%s: %s); collection goes on", type(err).__name__, msg[:300]
            )

    def _issue(self, fc: Any, last: Any) -> None:
        """Journal forecast `fc` (made from the steps up to bin `last`) and wait for its actuals."""
        issued = self.recent[-1]["timestamp"]
        qcols = [c for c in fc.columns if c.startswith("q")]
        for rec in fc.to_dict("records"):
            row = {"issued_at": _iso(issued), "timestamp": _iso(last + self.step * int(rec["step"])),
                   "host": self.collector.host, "target": rec["target"], "step": int(rec["step"]),
                   "point": float(rec.get("point", rec.get("q0.5", float("nan"))))}  # fmt: skip
            row.update({c: float(rec[c]) for c in qcols})
            self.forecasts.append(row)
            self.flagger.expect(row)
            if row["step"] == 1:
                self.latest_forecast[row["target"]] = row
        if self.recalibration is not None:
            self.recalibration.open_forecast(fc, _iso(issued))

    def flush(self) -> None:
        for journal in (self.collector, self.forecasts, self.flags):
            journal.flush()

    # -- display and loop ----------------------------------------------------------------------------------
    def table(self) -> Any:
        return live_table(self)

    def run(self, duration: float | None = None, live: bool = False) -> dict[str, int]:
        """Sample every `interval` s until `duration` s, SIGTERM or Ctrl-C; flush on the way out."""
        with Stop(duration) as stop:
            display = None
            if live:
                from rich.live import Live

                display = Live(self.table(), refresh_per_second=4)
                display.start()
            next_t = time.monotonic()
            try:
                while not stop():
                    self.sample()
                    if display is not None:
                        display.update(self.table())
                    # after a slow forecast, the next sample comes one interval later: no burst to catch up
                    next_t = max(next_t + self.interval, time.monotonic() - self.interval)
                    stop.sleep_until(next_t)
            except KeyboardInterrupt:
                pass
            finally:
                self.flush()
                if display is not None:
                    display.stop()
                    print(flush=True)  # the summary line below starts after the table's caption
        return self.counts


def _check(cfg: Any) -> tuple[str, str]:
    export, ckpt = cfg.get("export"), cfg.get("ckpt_path")
    if bool(export) == bool(ckpt):
        raise ZooError("give one of export=<export folder> or ckpt_path=<checkpoint | run folder>")
    check_sampling(cfg, "for samples/, forecasts/ and flags/",
                   ("interval", "forecast_every", "flush_every", "history", "duration"))  # fmt: skip
    for key, least in (("recalibrate", 0), ("recalibrate_min", 2)):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ZooError(f"{key}={value} must be a whole number of forecasts >= {least}")
    if cfg.get("live") not in (None, "auto", True, False):
        raise ZooError(f"live={cfg.get('live')}: expected auto, true or false")
    return ("export", str(export)) if export else ("ckpt_path", str(ckpt))


def watch(cfg: Any) -> dict[str, int]:
    """`python -m zoo.monitor`: check the keys, load the TFT, run the monitor; its counts."""
    from zoo.core.family import load_run

    key, path = _check(cfg)
    if cfg.get("source", "psutil") not in ("psutil", "prometheus"):
        raise ZooError(f"source={cfg.get('source')}: expected psutil (this machine) or prometheus (url=...)")
    run = load_run(path, key=key)
    if run.family != "tft":
        raise ZooError(f"{key}={path}: a {run.family} model; zoo.monitor forecasts with a TFT (family tft)")
    if run.module.calibration is None:
        log.warning("[zoo] monitor: %s carries no band calibration; flags use the raw bands", path)
    s = settings_of(MonitorSettings, cfg)
    if s.source == "prometheus":
        from zoo.tft.fleetmonitor import watch_fleet

        return watch_fleet(run.module, s, str(cfg.out), f"{key}={path}")
    mon = Monitor(run.module, str(cfg.out), s.interval, s.forecast_every, s.history, s.host, s.disk_path,
                  s.flush_every, s.recalibrate, s.recalibrate_min)  # fmt: skip
    live = sys.stdout.isatty() if s.live in (None, "auto") else bool(s.live)
    print(f"[zoo] monitor: {key}={path}, every {mon.interval:g} s, forecast every {mon.forecast_every} samples "
          f"from {mon.history} samples -> {mon.out}", flush=True)  # fmt: skip
    counts = mon.run(s.duration, live=live)
    print(f"[zoo] monitor: {counts['samples']} samples, {counts['forecasts']} forecasts ({counts['failed']} failed), "
          f"{counts['flags']} flags in {mon.out}", flush=True)  # fmt: skip
    return counts
