"""Calibrated quantile bands: a per-target, per-horizon, per-level recalibration of the TFT's quantiles,
fitted on the validation split after training and applied wherever quantiles leave the model (`zoo.eval`,
`zoo.tft.predict.forecast`, the figures, `zoo.monitor`).

Method (a scaled, one-sided split-conformal shift per quantile level). For every target ``t``, horizon
``h`` and quantile level ``tau`` other than the median, the validation windows give scaled residuals

    r = (y - q_tau) / s,   s = max(q_0.9 - q_0.1, floor[t, h])

(``s`` is the model's own P10-P90 width of that window: residuals are measured in units of the band the
model predicted, so one table serves hosts of very different scales and calm and busy windows alike).
The shift ``c[t, h, tau]`` is the conformal ``tau``-quantile of ``r`` (the ``ceil((n+1) tau)``-th order
statistic above the median, the ``floor((n+1) tau)``-th below it) and the calibrated quantile is
``q_tau + c * s``: on the validation windows a fraction ``tau`` of actuals falls below it, so the
P10-P90 and P2-P98 bands cover 80 % and 96 %. A shift by the ``tau``-quantile of the residuals is also
the shift that minimizes that level's pinball loss on those windows (up to the width weighting), so
calibration does not trade pinball loss for coverage there.

The median is left as the model predicted it, so point forecasts (median or ``model.point=mean``, which
`zoo.tft.evaluate` and ``forecast()`` read from the raw quantiles) do not change. Calibrated quantiles are
kept non-crossing and on the right side of the median (a running min below it, a running max above it).

Channel-independent models (``data.channel_independent``, one target ``value`` for every channel) get a
row per channel besides the pooled row: the channels' errors differ in size (ETTh1's OT vs HUFL).

Walk-forward (`rolling_apply`, `rolling_calibrated`): the same shifts refitted as time goes on from the
latest ``window`` forecasts whose whole horizon has been observed at each forecast origin (the
validation windows first), so the bands follow a change in the errors after the validation period; only
actuals of the past enter, as a live system has them. A window of past residuals lags a change and keeps
the bias of the period it holds, so each refit also moves the level it reads the window at (adaptive
conformal inference, Gibbs & Candes 2021): per horizon and quantile level, ``level += rate * (tau -
share of the newly matured actuals that fell below that calibrated quantile)``, clipped to [0, 1], with
the tails' rate scaled by their Bernoulli variance (``min(1, tau (1 - tau) / 0.09)``: 0.22 at P2/P98). A
level whose bound is missed too often is read further out in the window, one that is met too often
further in; over a long run the share below each calibrated quantile approaches ``tau`` whatever the
shift. ``ADAPT_RATE`` (per refit) trades how fast the bands react for how much they jitter.
`zoo.tft.evaluate` reports it beside the static table (``*_rolling`` keys); `zoo.monitor` refits its
table the same way from its own matured forecasts.

The table is plain tensors and lists (`to_state`), so it rides in checkpoints loaded with
``torch.load(weights_only=True)`` and in an export's ``calibration.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import ZooError

METHOD = "scaled-conformal-shift"
VERSION = 1
FILE = "calibration.json"
ADAPT_RATE = 0.05
"""Walk-forward: how far one refit (a quarter horizon) moves a level per unit of coverage error (0: a
plain rolling window). Per refit rather than per window, so the feedback delay (a horizon) is four refits
whatever the data's step and stride."""


def _index(levels: list[float], q: float) -> int | None:
    return next((i for i, v in enumerate(levels) if abs(v - q) < 1e-9), None)


def _scale(q: torch.Tensor, levels: list[float], floor: torch.Tensor) -> torch.Tensor:
    """Per-window scale [..., P]: the raw P10-P90 width, at least `floor` [P]."""
    lo, hi = _index(levels, 0.1), _index(levels, 0.9)
    width = q[..., hi] - q[..., lo]
    return torch.maximum(width, floor.to(q.dtype))


def non_crossing(q: torch.Tensor, mid: int) -> torch.Tensor:
    """Quantiles [..., L] made monotone without moving the median column `mid`."""
    lower = q[..., : mid + 1].flip(-1).cummin(-1).values.flip(-1)
    upper = q[..., mid:].cummax(-1).values
    return torch.cat([lower[..., :mid], q[..., mid : mid + 1], upper[..., 1:]], dim=-1)


def _order_statistics(r: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Per column of r [N, ...]: the order statistic a split-conformal bound of level tau [...] uses (the
    ceil((n+1) tau)-th above the median, the floor((n+1) tau)-th below it)."""
    n = r.shape[0]
    s = r.sort(dim=0).values
    k = torch.where(tau > 0.5, torch.ceil((n + 1) * tau), torch.floor((n + 1) * tau)).long()
    k = k.clamp(1, n)  # beyond the sample: the extreme residual (too few windows for that level)
    return torch.gather(s, 0, (k - 1)[None]).squeeze(0)


@dataclass
class Calibration:
    levels: list[float]
    """The model's quantile levels, in order."""
    keys: list[str]
    """Row names: the targets, then (channel-independent models) the channels."""
    shift: torch.Tensor
    """[rows, P, L]: added to each quantile in units of the window's scale; 0 at the median."""
    floor: torch.Tensor
    """[rows, P]: smallest scale, so a window the model is sure about still gets a band."""
    windows: int = 0
    split: str = "val"
    level: torch.Tensor | None = None
    """[rows, P, L]: the levels walk-forward refits read their residuals at (None: the nominal ones)."""

    # -- persistence -------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """Plain tensors/lists: loadable with torch.load(weights_only=True)."""
        state = {"method": METHOD, "version": VERSION, "levels": list(self.levels), "keys": list(self.keys),
                 "shift": self.shift.detach().cpu().float(), "floor": self.floor.detach().cpu().float(),
                 "windows": int(self.windows), "split": self.split}  # fmt: skip
        if self.level is not None:
            state["level"] = self.level.detach().cpu().float()
        return state

    def to_json(self) -> dict[str, Any]:
        state = self.to_state()
        for key in ("shift", "floor", "level"):
            if key in state:
                state[key] = state[key].tolist()
        return state

    @classmethod
    def from_state(cls, state: Any, where: str = "calibration") -> Calibration:
        if not isinstance(state, dict) or state.get("method") != METHOD:
            got = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ZooError(f"{where}: not a {METHOD} calibration table (got {got!r})")
        shift = torch.as_tensor(state["shift"], dtype=torch.float32)
        floor = torch.as_tensor(state["floor"], dtype=torch.float32)
        keys, levels = [str(k) for k in state["keys"]], [float(v) for v in state["levels"]]
        if shift.shape != (len(keys), floor.shape[-1], len(levels)) or floor.shape != shift.shape[:2]:
            raise ZooError(
                f"{where}: shift {tuple(shift.shape)} / floor {tuple(floor.shape)} do not match {len(keys)} rows x {len(levels)} levels"
            )
        level = state.get("level")
        level = None if level is None else torch.as_tensor(level, dtype=torch.float32)
        if level is not None and level.shape != shift.shape:
            raise ZooError(f"{where}: level {tuple(level.shape)} does not match shift {tuple(shift.shape)}")
        return cls(
            levels, keys, shift, floor, int(state.get("windows", 0)), str(state.get("split", "val")), level
        )

    def save_json(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)
        return path

    @classmethod
    def load_json(cls, folder: str | Path) -> Calibration | None:
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ZooError(f"{path}: not a readable calibration table ({type(err).__name__})") from err
        return cls.from_state(state, str(path))

    def check(self, levels: list[float], targets: list[str], horizon: int, where: str) -> None:
        """Refuse a table fitted for another model (other quantiles, targets or horizon)."""
        if [round(v, 9) for v in levels] != [round(v, 9) for v in self.levels]:
            raise ZooError(
                f"{where}: calibration levels {self.levels} differ from the model's quantiles {levels}"
            )
        if self.keys[: len(targets)] != list(targets):
            raise ZooError(
                f"{where}: calibration targets {self.keys[: len(targets)]} differ from the model's {targets}"
            )
        if self.shift.shape[1] != horizon:
            raise ZooError(
                f"{where}: calibration horizon {self.shift.shape[1]} differs from the model's {horizon}"
            )

    # -- use -------------------------------------------------------------------------------------------
    def row(self, key: str) -> int | None:
        return self.keys.index(key) if key in self.keys else None

    def apply(self, q: torch.Tensor, target: str, channels: list[str] | None = None) -> torch.Tensor:
        """Calibrated quantiles of `target`: q [N, P, L] (or [P, L]); `channels` names each window's channel
        (channel-independent models), whose own row is used where the table has one."""
        single = q.dim() == 2
        q = q[None] if single else q
        out = self._apply_row(q, self.keys.index(target))
        if channels is not None:
            names = list(channels)
            for name in set(names):
                r = self.row(name)
                if r is None or name == target:
                    continue
                sel = torch.tensor([c == name for c in names])
                out[sel] = self._apply_row(q[sel], r)
        return out[0] if single else out

    def residuals(self, key: str, q: torch.Tensor, actual: torch.Tensor, unit: float = 1.0) -> torch.Tensor:
        """Scaled residuals [N, P, L] of row `key`'s raw quantiles q [N, P, L] against actual [N, P], both in
        units of `unit` model units (a standardized target's scaler sd; the floor is in model units)."""
        floor = self.floor[self.keys.index(key)].to(q.dtype) * unit
        return scaled_residuals(q, actual, self.levels, floor)

    def levels_of(self, key: str) -> torch.Tensor:
        """Row `key`'s walk-forward levels [P, L] (the nominal ones until `adapt` moves them)."""
        if self.level is None:
            self.level = torch.tensor(self.levels).expand(*self.shift.shape).clone()
        return self.level[self.keys.index(key)]

    def adapt(self, key: str, below: torch.Tensor, scale: float = 1.0) -> None:
        """Move row `key`'s levels by newly matured forecasts (`adapted`, at `scale` x ADAPT_RATE): below
        [N, P, L] tells, per window, horizon and level, whether the actual fell at or below the calibrated
        quantile it was given."""
        level = self.levels_of(key)
        level.copy_(adapted(level, torch.tensor(self.levels), below, ADAPT_RATE * scale))

    def refit(self, key: str, r: torch.Tensor) -> None:
        """Row `key`'s shifts refitted from scaled residuals r [N, P, L] at its levels (`zoo.monitor`)."""
        self.shift[self.keys.index(key)] = shifts_of(r, self.levels, self.levels_of(key))

    def _apply_row(self, q: torch.Tensor, r: int, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Row `r`'s calibration of q [N, P, L], with `shift` [P, L] instead of the row's own if given."""
        mid = _index(self.levels, 0.5)
        s = _scale(q, self.levels, self.floor[r].to(q.device))
        shift = self.shift[r] if shift is None else shift
        out = q + shift.to(q.device, q.dtype)[None] * s[..., None]
        return non_crossing(out, mid)


def fit(
    quantiles: list[torch.Tensor],
    actual: list[torch.Tensor],
    levels: list[float],
    targets: list[str],
    channels: list[str] | None = None,
    split: str = "val",
) -> Calibration:
    """Fit the table on one split's windows: quantiles[t] [N, P, L] and actual[t] [N, P] (raw, model units);
    `channels` (channel-independent models, one target) names each window's channel."""
    mid = _index(levels, 0.5)
    if mid is None or _index(levels, 0.1) is None or _index(levels, 0.9) is None:
        raise ZooError(f"model.quantiles={levels}: calibration needs 0.1, 0.5 and 0.9")
    rows: list[tuple[str, torch.Tensor, torch.Tensor]] = [
        (name, q.float(), a.float()) for name, q, a in zip(targets, quantiles, actual)
    ]
    if channels is not None:
        names = list(channels)
        for name in sorted(set(names)):
            sel = torch.tensor([c == name for c in names])
            rows.append((name, quantiles[0][sel].float(), actual[0][sel].float()))
    n = min(int(q.shape[0]) for _, q, _ in rows)
    if n < 2:
        raise ZooError(
            f"calibration needs validation windows: {n} on the {split} split (lower data.val_fraction's share of test or eval_stride)"
        )
    P, L = quantiles[0].shape[1], len(levels)
    shift = torch.zeros(len(rows), P, L)
    floor = torch.zeros(len(rows), P)
    for i, (_, q, a) in enumerate(rows):
        width = q[..., _index(levels, 0.9)] - q[..., _index(levels, 0.1)]
        # A floor a little above zero: windows the model calls certain (a constant disk) would otherwise
        # divide a real miss by ~0 and blow up every other window's shift.
        floor[i] = 0.05 * width.median(dim=0).values.clamp_min(0) + 1e-6
        shift[i] = shifts_of(scaled_residuals(q, a, levels, floor[i]), levels)
    return Calibration(list(levels), [r[0] for r in rows], shift, floor, n, split)


def scaled_residuals(
    q: torch.Tensor, actual: torch.Tensor, levels: list[float], floor: torch.Tensor
) -> torch.Tensor:
    """(y - q_tau) / s for every window, horizon and level: q [N, P, L], actual [N, P] -> [N, P, L]."""
    s = _scale(q, levels, floor)
    return (actual[..., None].to(q.dtype) - q) / s[..., None]


def shifts_of(r: torch.Tensor, levels: list[float], at: torch.Tensor | None = None) -> torch.Tensor:
    """The shift table [P, L] of scaled residuals r [N, P, L]: each level's conformal quantile (read at
    levels `at` [P, L] instead of the nominal ones where given), 0 at the median."""
    tau = torch.tensor(levels).expand(*r.shape[1:]) if at is None else at
    out = _order_statistics(r.float(), tau.float())
    out[:, _index(levels, 0.5)] = 0.0
    return out


def rolling_apply(cal: Calibration, row: int, q: torch.Tensor, actual: torch.Tensor, origin: torch.Tensor,
                  seed: torch.Tensor, seed_origin: torch.Tensor, window: int = 1000, every: int | None = None,
                  rate: float = ADAPT_RATE) -> torch.Tensor:  # fmt: skip
    """Quantiles q [N, P, L] of windows forecast from time steps `origin` [N], calibrated walk-forward: each
    is shifted by the table of the latest `window` forecasts already fully observed at its origin (whole
    horizon before it), taken from these windows and from `seed` [M, P, L] (scaled residuals of the
    calibration split, forecast from `seed_origin` [M]), read at levels that each refit moves by `rate`
    times the coverage error of the windows matured since the last one (module docstring). Refitted
    every `every` time steps (default: a quarter horizon); before two forecasts have matured, the static
    table. Only actuals of the past are used, as a live system would have them."""
    N, P, L = q.shape
    if N == 0:
        return q.clone()
    every = max(1, every or P // 4)
    floor = cal.floor[row].to(q.device)
    M = len(seed)
    history = torch.cat([seed.to(q.dtype), scaled_residuals(q, actual, cal.levels, floor)])
    matured = torch.cat([seed_origin.to(origin.dtype), origin]) + P  # last target observed before this step
    by_time = torch.argsort(matured, stable=True)
    history, matured = history[by_time], matured[by_time]
    window_of = by_time - M  # each matured entry's window in q (negative: a seed entry)
    tau = torch.tensor(cal.levels)
    level = tau.expand(P, L).clone()
    first = int(origin.min())
    block = (origin - first) // every
    out = torch.empty_like(q)
    seen = None  # entries of `history` matured before the previous refit
    for b in torch.unique(block).tolist():
        m = int(torch.searchsorted(matured, torch.tensor(first + b * every, dtype=matured.dtype), right=True))
        if seen is not None:
            new = window_of[seen:m]
            new = new[new >= 0]  # the calibration split's windows were not forecast with these bands
            level = adapted(level, tau, actual[new][..., None] <= out[new], rate)
        seen = m
        past = history[max(0, m - window) : m]
        idx = torch.nonzero(block == b).squeeze(1)
        out[idx] = cal._apply_row(q[idx], row, shifts_of(past, cal.levels, level) if len(past) >= 2 else None)
    return out


def adapted(level: torch.Tensor, tau: torch.Tensor, below: torch.Tensor, rate: float) -> torch.Tensor:
    """Levels [P, L] after one refit's matured windows: below [N, P, L] tells whether each actual fell at
    or below the calibrated quantile it was given; each level moves by `rate` times its coverage error
    (tau minus the share below), clipped to [0, 1]; the median's stays."""
    if rate <= 0 or below.shape[0] == 0:
        return level
    step = rate * (tau * (1 - tau) / 0.09).clamp(max=1.0)  # the tails' steps shrink with their variance
    out = (level + step * (tau - below.float().mean(0))).clamp(0.0, 1.0)
    out[:, _index(tau.tolist(), 0.5)] = 0.5
    return out


def rolling_calibrated(cal: Calibration, split: dict[str, Any], seed: dict[str, Any], targets: list[str],
                       window: int = 1000, every: int | None = None, rate: float = ADAPT_RATE) -> list[torch.Tensor]:  # fmt: skip
    """`Calibration.apply`'s rows (a target's own, or its channel's), walk-forward over a split
    (`rolling_apply`). `split` and `seed` (the calibration split, earlier in time) hold ``quantiles``
    and ``actual`` per target, ``origin`` [N] (each window's first forecast time step) and ``channels``
    (channel-independent models, else None)."""
    out = []
    for t, name in enumerate(targets):
        q, a, origin = split["quantiles"][t], split["actual"][t], split["origin"]
        res = torch.empty_like(q)
        names, seed_names = split.get("channels"), seed.get("channels")
        own = [c for c in sorted(set(names)) if c != name and cal.row(c) is not None] if names else []
        streams = [(cal.row(c), [n == c for n in names], [n == c for n in seed_names or ()]) for c in own]
        rest = [n not in own for n in names] if names else [True] * len(q)
        streams.append((cal.keys.index(name), rest, [True] * len(seed["origin"])))
        for r, sel, seed_sel in streams:
            sel, seed_sel = torch.tensor(sel, dtype=torch.bool), torch.tensor(seed_sel, dtype=torch.bool)
            if not bool(sel.any()):
                continue
            sq, sa, so = seed["quantiles"][t][seed_sel], seed["actual"][t][seed_sel], seed["origin"][seed_sel]
            history = scaled_residuals(sq, sa, cal.levels, cal.floor[r])
            res[sel] = rolling_apply(cal, r, q[sel], a[sel], origin[sel], history, so, window, every, rate)
        out.append(res)
    return out


def pinball(q: torch.Tensor, actual: torch.Tensor, levels: list[float]) -> float:
    """Mean pinball (quantile) loss over windows, horizons and levels: q [N, P, L], actual [N, P]."""
    tau = torch.tensor(levels, dtype=q.dtype)
    diff = actual[..., None].to(q.dtype) - q
    return float(torch.maximum(tau * diff, (tau - 1) * diff).mean())


def coverage(
    q: torch.Tensor, actual: torch.Tensor, levels: list[float], lo: float, hi: float
) -> float | None:
    """Share of actuals inside the [lo, hi] band; None when the model has no such levels."""
    i, j = _index(levels, lo), _index(levels, hi)
    if i is None or j is None:
        return None
    return float(((actual >= q[..., i]) & (actual <= q[..., j])).float().mean())


MAX_WINDOWS = 20_000
"""Windows a calibration is fitted on at most: beyond it, a seeded uniform sample of the split's windows
(only those are predicted). A fleet's validation split holds ~10^6 windows whose quantiles alone are
gigabytes; 20,000 exchangeable windows put each conformal bound within about one order statistic's
sampling error of the full split's (P2/P98: sd of the covered share ~ sqrt(0.02 * 0.98 / 20000) = 0.001),
tests/tft/test_calibration_cap.py and docs/benchmarks/prometheus.md measure the coverage."""


class WindowSubset:
    """The windows `indices` of a `WindowBatches` (or `StockBatches`), batched the same way."""

    def __init__(self, batches: Any, indices: list[int]):
        self.batches, self.indices = batches, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, ids: list[int]) -> Any:
        return self.batches.__getitems__([self.indices[i] for i in ids])


def sample_windows(n: int, cap: int | None, seed: int = 0) -> list[int]:
    """Every window index below n, or a sorted seeded uniform sample of `cap` of them."""
    if cap is None or n <= cap:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:cap].tolist())


def fit_module(module: Any, dm: Any, split: str = "val", result: dict[str, Any] | None = None,
               max_windows: int | None = MAX_WINDOWS) -> Calibration:  # fmt: skip
    """Fit `module`'s calibration on the datamodule's `split` windows (eval mode): all of them up to
    `max_windows`, a seeded uniform sample of that many beyond (`MAX_WINDOWS`; only those are predicted,
    so memory stays bounded whatever the fleet); `result`: the module's `predict_batches` of the whole
    split when the caller already has it (then all its windows are used)."""
    if result is None:
        batches = dm.batches(split)
        chosen = sample_windows(len(batches), max_windows)
        result = module.predict_batches(WindowSubset(batches, chosen))
    else:
        chosen = list(range(result["n"]))
    channels = None
    if getattr(dm, "channel_independent", False):
        ds = dm.datasets[split if split in dm.datasets else "val"]
        names = ds.decoded_index["series"].to_numpy()
        channels = [str(names[i]).rsplit("/", 1)[-1] for i in chosen]
    return fit(result["quantiles"], result["actual"], module.quantiles, module.target_names, channels, split)
