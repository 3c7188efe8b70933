"""The TFT's data settings (``data=tft/...``): typed, with their defaults in one place. conf/data/tft/_base.yaml
states the same defaults (tests/tft/test_configs.py keeps them equal); each data config sets what its
dataset needs. The shared loader settings (batch size, workers, seed, cache folder) are `ZooDataModule`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo.core.errors import ZooError
from zoo.tft import sources as S

SOURCES = ("synthetic", "file", "alibaba", "bitbrains", "nab", "ett", "prometheus")


def _names(value: Any) -> list[Any]:
    return list(value or [])


@dataclass
class DataConfig:
    """What `MetricsDataModule` reads and how it makes windows of it."""

    source: str = "synthetic"
    """synthetic | file (Parquet/CSV/JSON, with ``columns``) | alibaba | bitbrains | nab | ett (the public
    traces' own layouts; ``path`` points at them) | prometheus (``url``, ``queries``: `zoo.tft.prometheus`)."""
    path: str | None = None
    """The file (or glob, or folder) to read; every source but synthetic and prometheus needs it."""
    format: str | None = None
    """File format when the suffix does not tell (parquet, csv, json, jsonl)."""
    read_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``pandas.read_*`` arguments."""
    columns: dict[str, str] = field(default_factory=dict)
    """zoo name -> source column (``timestamp``, ``series``, each target and covariate)."""
    timestamp_unit: str | None = None
    """Unit of numeric timestamps (s, ms...)."""
    targets: list[str] = field(default_factory=lambda: list(S.DEFAULT_TARGETS))
    """Columns to forecast (several: multi-target); a single name is a one-item list."""
    known_reals: list[str] = field(default_factory=list)
    """Real covariates known in advance (in the table)."""
    unknown_reals: list[str] = field(default_factory=list)
    """Real covariates observed only up to now (in the table)."""
    static_reals: list[str] = field(default_factory=list)
    """Real per-series constants (in the table)."""
    static_categoricals: list[str] = field(default_factory=list)
    """Categorical per-series constants; ``host`` (the original series id) is always available."""
    calendar: list[str] = field(default_factory=list)
    """Known calendar features: hour, weekday, hour_sin, hour_cos, weekday_sin, weekday_cos, is_weekend."""
    lags: list[int] = field(default_factory=list)
    """Lagged copies of the targets (in steps), as unknown reals."""
    rolling: list[int] = field(default_factory=list)
    """Trailing rolling mean/std windows of the targets (in steps), as unknown reals."""
    step: str = "5min"
    """Resampling step."""
    max_gap: str = "15min"
    """Gaps up to this long are forward-filled; longer ones split the series."""
    duplicates: str = "error"
    """error | mean: what to do with repeated timestamps in a series."""
    encoder_length: int = 96
    """History window, in steps."""
    prediction_length: int = 24
    """Forecast horizon, in steps."""
    val_fraction: float = 0.2
    """The last fraction of every series (before the test part) validates (a time cutoff per series)."""
    test_fraction: float = 0.0
    """The last fraction of every series tests."""
    split_rows: list[int] | None = None
    """[train, val, test] rows from each series' start instead of the fractions (ETTh1's 12/4/4 months)."""
    standardize: bool = False
    """z-normalize targets and covariates with training-split statistics (ETT protocol; metrics are then on
    that scale)."""
    target_normalizer: str = "group"
    """group (per-series GroupNormalizer fitted on the training split) | encoder (EncoderNormalizer: every
    window scaled by its own history, which follows level shifts such as ETT's)."""
    target_transformation: str | None = None
    """Normalizer transformation: null, softplus, log1p, relu."""
    channel_independent: bool = False
    """Forecast every target as its own series (``<series>/<target>``, one univariate model shared by all
    channels, the channel a static categorical) instead of all targets jointly."""
    season: str = "1D"
    """Seasonal period of the seasonal-naive baselines and MASE."""
    eval_stride: int = 1
    """Keep every n-th validation/test window (they overlap by design)."""
    loader: str = "fast"
    """fast (`zoo.tft.fastpath`: the same batches, precomputed) | stock (TimeSeriesDataSet + its collate)."""
    max_series: int | None = None
    """Keep the first N series (after sorting by id)."""
    drop_short_series: bool = False
    """Drop series shorter than encoder_length + prediction_length instead of failing."""
    synthetic: dict[str, Any] = field(default_factory=dict)
    """Settings of `zoo.tft.sources.synthetic_hosts` (source=synthetic)."""
    url: str | None = None
    """source=prometheus: the server's base URL, e.g. http://127.0.0.1:9090."""
    queries: dict[str, str] = field(default_factory=dict)
    """source=prometheus: target -> PromQL expression, one series per host (a target left out: the
    node_exporter default of `zoo.tft.prometheus.DEFAULT_QUERIES`)."""
    start: Any = None
    """source=prometheus: first sample time: unix seconds, a date (UTC unless it says) or now-<duration>
    (None: now-7d); aligned to ``step``."""
    end: Any = None
    """source=prometheus: last sample time, as ``start`` (None: now)."""
    series_labels: list[str] = field(default_factory=lambda: ["instance"])
    """source=prometheus: the labels whose values identify a series."""
    pull: dict[str, Any] = field(default_factory=dict)
    """source=prometheus: `zoo.tft.prometheus.PullSettings` (parallel, retries, timeout, max_points, backoff)."""

    def __post_init__(self) -> None:
        self.targets = (
            [self.targets] if isinstance(self.targets, str) else list(self.targets or S.DEFAULT_TARGETS)
        )
        for key in ("known_reals", "unknown_reals", "static_reals", "static_categoricals", "calendar"):
            setattr(self, key, _names(getattr(self, key)))
        self.lags, self.rolling = [int(v) for v in self.lags or []], [int(v) for v in self.rolling or []]
        self.read_kwargs, self.columns = dict(self.read_kwargs or {}), dict(self.columns or {})
        self.synthetic = dict(self.synthetic or {})
        self.queries, self.pull = dict(self.queries or {}), dict(self.pull or {})
        self.series_labels = _names(self.series_labels)
        self.split_rows = [int(v) for v in self.split_rows] if self.split_rows else None
        self.check()

    def check(self) -> None:
        """One-line errors naming the key, before anything is read."""
        if self.source not in SOURCES:
            raise ZooError(f"data.source={self.source}: expected one of {', '.join(SOURCES)}")
        if self.source not in ("synthetic", "prometheus") and not self.path:
            raise ZooError(f"data.source={self.source} needs data.path")
        for key, allowed in (("duplicates", ("error", "mean")), ("target_normalizer", ("group", "encoder"))):
            if getattr(self, key) not in allowed:
                raise ZooError(f"data.{key}={getattr(self, key)}: expected {' or '.join(allowed)}")
        if self.channel_independent and (self.lags or self.rolling):
            raise ZooError(
                "data.channel_independent=true forecasts each target alone: drop data.lags and data.rolling "
                "(lagged copies of the other targets would leak across channels)"
            )
        if self.loader not in ("fast", "stock"):
            raise ZooError(f"data.loader={self.loader}: expected fast or stock")
        if int(self.encoder_length) <= 0 or int(self.prediction_length) <= 0:
            raise ZooError(
                f"data.encoder_length={self.encoder_length} and data.prediction_length={self.prediction_length} "
                "must be positive"
            )
        v, t = self.val_fraction, self.test_fraction
        if self.split_rows is None and not (0.0 < v < 1.0 and 0.0 <= t < 1.0 and v + t < 1.0):
            raise ZooError(
                f"data.val_fraction={v} and data.test_fraction={t} must be in [0, 1) and sum below 1"
            )
        if not self.targets:
            raise ZooError("data.targets is empty: name at least one column to forecast")

    def fingerprinted(self) -> dict[str, Any]:
        """The settings that decide the prepared frame (what the cache folder's name is a fingerprint of)."""
        names = ("source", "path", "format", "read_kwargs", "columns", "timestamp_unit", "targets", "known_reals",
                 "unknown_reals", "static_reals", "calendar", "lags", "rolling", "step", "max_gap", "duplicates",
                 "max_series", "drop_short_series", "synthetic")  # fmt: skip
        return {**{k: getattr(self, k) for k in names}, "min_length": self.min_length}

    @property
    def min_length(self) -> int:
        return int(self.encoder_length) + int(self.prediction_length)
