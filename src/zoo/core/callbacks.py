"""Callbacks shared by every family (composed by Hydra from conf/callbacks)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info

from zoo.core.family import ZooModule

# Dense peak FLOP/s per device for the dtype mixed precision computes in (no sparsity). Matched by
# substring of torch.cuda.get_device_name(); the first match wins, so more specific names come first.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "fp16": 756.0e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "A100": {"bf16": 312.0e12, "fp16": 312.0e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362.0e12, "fp16": 362.0e12, "fp32": 91.6e12},
    "A10G": {"bf16": 125.0e12, "fp16": 125.0e12, "fp32": 31.2e12},
    "L4": {"bf16": 121.0e12, "fp16": 121.0e12, "fp32": 30.3e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12},
    "V100": {"bf16": 0.0, "fp16": 125.0e12, "fp32": 15.7e12},
    "T4": {"bf16": 0.0, "fp16": 65.0e12, "fp32": 8.1e12},
}

_measured_cpu_peak: dict[str, float] = {}


def precision_dtype(precision: str) -> str:
    """The matmul dtype a Lightning precision string computes in."""
    if str(precision).startswith("bf16"):
        return "bf16"
    if str(precision).startswith("16"):
        return "fp16"
    return "fp32"


def cpu_peak_cache() -> Path:
    """Where measured CPU peaks are kept: ``$XDG_CACHE_HOME/zoo/cpu_peak.json`` (``~/.cache/zoo/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zoo" / "cpu_peak.json"


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _probe_matmul_flops(torch_dtype: torch.dtype, size: int, seconds: float, rounds: int) -> float:
    """Best of `rounds` timed rounds of size x size matmuls, after a warm-up."""
    a = torch.randn(size, size, dtype=torch_dtype)
    b = torch.randn(size, size, dtype=torch_dtype)
    start = time.perf_counter()
    for _ in range(2):  # warm-up: thread pool, kernel selection, caches
        a @ b
    one = (time.perf_counter() - start) / 2
    budget = seconds / rounds
    if one > budget and size > 128:  # a dtype this CPU has no fast path for (bf16 without AMX/AVX512-BF16)
        return _probe_matmul_flops(torch_dtype, size // 2, seconds, rounds)
    reps = max(1, int(budget / max(one, 1e-6)))
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
    return best


def measured_cpu_peak(dtype: str = "fp32", size: int = 1024, seconds: float = 2.0, rounds: int = 5) -> float:
    """Matmul FLOP/s this CPU reaches in `dtype` with torch's current thread count: the CPU MFU denominator.

    Measured once per machine, not once per run: the best of `rounds` warmed-up rounds of size x size
    matmuls over `seconds` in all (other processes can only slow a round down, so the best round is the
    one nearest the machine's peak), then stored in `cpu_peak_cache()` under the CPU model, thread count,
    dtype and torch version. Every later run on that machine reads the same number, so MFU from two runs
    divides by the same denominator (a 0.3 s probe per run read 0.05-0.20 TFLOP/s on one busy machine).
    Delete the file to measure again, e.g. on a quiet machine; `callbacks.throughput.peak_flops` overrides it.
    """
    threads = torch.get_num_threads()
    key = f"{cpu_model()} | {threads} threads | {dtype} | torch {torch.__version__.split('+')[0]}"
    if key in _measured_cpu_peak:
        return _measured_cpu_peak[key]
    from filelock import FileLock

    path = cpu_peak_cache()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
    except OSError:  # read-only home: measure for this process only
        lock = None
    # Under the lock, so concurrent first runs on a machine measure once and all read that one value.
    with lock if lock is not None else contextlib.nullcontext():
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        if key not in table:
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            table[key] = _probe_matmul_flops(torch_dtype, size, seconds, rounds)
            if lock is not None:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                try:
                    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
                    os.replace(tmp, path)
                except OSError:
                    pass
    _measured_cpu_peak[key] = float(table[key])
    return _measured_cpu_peak[key]


def device_peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for MFU."""
    dtype = precision_dtype(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in name:
                return peaks[dtype], f"{name} datasheet ({dtype})"
        return 0.0, f"{name} (not in GPU_PEAK_FLOPS)"
    return measured_cpu_peak(dtype), (
        f"measured CPU peak ({dtype} matmul, {torch.get_num_threads()} threads; cached in {cpu_peak_cache()})"
    )


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether step-level `self.log(..., on_step=True)` from this training batch reaches the logger: the
    steps Lightning writes logs at (every `log_every_n_steps`), fast_dev_run, and the last batch of an
    epoch or of the run, so `callback_metrics` (metrics.json) still end on the final values.

    Each `self.log` call costs Lightning's result collection real host time; gate per-step logging on this.
    """
    if trainer.fast_dev_run:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None or connector.should_update_logs:
        return True
    if 0 < trainer.max_steps <= trainer.global_step + 1:
        return True
    return bool(trainer.is_last_batch)


def log_grad_norm(module: pl.LightningModule) -> None:
    """Log `train/grad_norm` (global L2 norm) on the steps whose logs are written (`logs_this_step`).

    Call it from `on_before_optimizer_step`: the gradients are accumulated and not yet clipped there, so
    this is the norm clipping acts on. Only on those steps does it walk the parameters and compute the
    norm, and it logs a tensor: nothing here waits for the device.
    """
    if not logs_this_step(module.trainer):
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
        )
        module.log("train/grad_norm", norm, on_step=True, on_epoch=False)


class Throughput(Callback):
    """Logs samples/s, tokens/s and MFU over windows of `log_every_n_steps` training batches.

    A `ZooModule` describes its batches with ``batch_stats(batch) -> (samples, tokens)`` and may give
    ``flops_per_token`` (forward + backward); without them tokens == samples and MFU is not logged.
    Rates are global: per-rank rates times the world size.

    MFU's denominator (`peak_flops`, else `device_peak_flops`): the datasheet peak for known GPUs; on CPU
    `measured_cpu_peak`, measured once per machine, thread count and dtype (best of several warmed-up
    matmul rounds) and cached on disk, so every run on a machine divides by the same number.
    """

    def __init__(self, log_every_n_steps: int = 20, peak_flops: float | None = None):
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self.peak_flops = peak_flops
        self._peak = 0.0
        self._window_start: float | None = None
        self._samples = 0
        self._tokens = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.peak_flops is not None:
            self._peak, source = float(self.peak_flops), "config"
        else:
            self._peak, source = device_peak_flops(pl_module.device, str(trainer.precision))
        if self._peak:
            rank_zero_info(f"[zoo] MFU is measured against {self._peak / 1e12:.2f} TFLOP/s ({source})")

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window_start is None:
            self._sync(pl_module)
            self._window_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        samples, tokens = (
            pl_module.batch_stats(batch) if isinstance(pl_module, ZooModule) else (len(batch),) * 2
        )
        self._samples += samples
        self._tokens += tokens
        if (batch_idx + 1) % self.log_every_n_steps or self._window_start is None:
            return
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._window_start
        world = trainer.world_size
        metrics = {
            "throughput/samples_per_sec": self._samples * world / elapsed,
            "throughput/tokens_per_sec": self._tokens * world / elapsed,
        }
        flops_per_token = pl_module.flops_per_token if isinstance(pl_module, ZooModule) else None
        if flops_per_token and self._peak:
            achieved = flops_per_token * self._tokens / elapsed  # per device
            metrics["throughput/flops_per_sec"] = achieved
            metrics["throughput/mfu"] = achieved / self._peak
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False, rank_zero_only=True)
        self._window_start, self._samples, self._tokens = None, 0, 0


class StoreConfig(Callback):
    """Stores the run's resolved config in every checkpoint, so eval/generate need only `ckpt_path`."""

    def __init__(self, config_yaml: str = ""):
        self.config_yaml = config_yaml

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["zoo_config"] = self.config_yaml


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),  # a tuple of ints: weights_only-safe as a list
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(Callback):
    """Saves the python, numpy, torch (and CUDA) generators of every rank in each checkpoint and restores
    them on resume, so dropout after a resume draws what the uninterrupted run drew.

    The restore waits for the first training batch: between loading the checkpoint and that batch,
    Lightning builds a new DataLoader iterator, which draws its worker seed from the torch generator;
    the uninterrupted run drew that seed before the saved state, at the start of the epoch.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint.setdefault("zoo_rng", {})[trainer.global_rank] = _rng_state()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("zoo_rng") or {}
        self._pending = states.get(trainer.global_rank)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None


class DivergenceGuard(Callback):
    """Stops training at the first non-finite gradient (a NaN/inf loss gives one too), naming the step and
    the last good checkpoint, which is left as it was; with ``action="skip"`` the bad batch's update is
    dropped instead (its gradients are discarded before the optimizer sees them) and counted in
    ``train/skipped_batches``, up to ``max_skips`` in a row.

    Under ``16-mixed`` the grad scaler already skips steps with inf gradients (and lowers its scale), so
    the guard leaves those steps to it.
    """

    def __init__(self, action: str = "stop", max_skips: int = 10):
        if action not in ("stop", "skip"):
            from zoo.core.errors import ZooError

            raise ZooError(f"callbacks.divergence.action={action}: expected stop or skip")
        self.action, self.max_skips = action, int(max_skips)
        self.skipped = 0
        self._in_a_row = 0
        self._params: list[torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Walking module.parameters() every step cost more than the norm itself (0.22 of 0.40 ms on the
        # events baseline); the strategy has wrapped the model by now, so these are the trained tensors.
        self._params = [p for p in pl_module.parameters() if p.requires_grad]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        params = self._params if self._params is not None else list(pl_module.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
        if trainer.world_size > 1:  # every rank must take the same decision
            flag = torch.tensor(float(finite), device=pl_module.device)
            finite = bool(trainer.strategy.reduce(flag, reduce_op="min") > 0)
        if finite:
            self._in_a_row = 0
            return
        step = trainer.global_step + 1
        if self.action == "skip" and self._in_a_row < self.max_skips:
            for p in pl_module.parameters():
                p.grad = None
            self.skipped += 1
            self._in_a_row += 1
            pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)
            rank_zero_info(
                f"[zoo] non-finite gradient at step {step}: update skipped ({self.skipped} so far)"
            )
            return
        from zoo.core.errors import ZooError

        last = _last_checkpoint(trainer)
        why = (
            f"after {self._in_a_row} skipped updates in a row"
            if self.action == "skip"
            else "(loss or gradients)"
        )
        raise ZooError(
            f"training diverged at step {step} (epoch {trainer.current_epoch}): non-finite gradient norm {why}; "
            f"last good checkpoint: {last or 'none saved yet'} (left intact). Resume from it with a lower "
            "model.optim.lr or trainer.gradient_clip_val, or set callbacks.divergence.action=skip"
        )


def _last_checkpoint(trainer: pl.Trainer) -> str:
    from pathlib import Path

    from zoo.core.checkpoint import checkpoints_in

    paths = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    found = sorted((p for d in paths for p in checkpoints_in(Path(d))), key=lambda p: p.stat().st_mtime_ns)
    return str(found[-1]) if found else ""


class StepCheckpoint(ModelCheckpoint):
    """`last-step.ckpt` every N optimizer steps (a crash loses at most N steps). Its own name: sharing
    `last.ckpt` with the validation-time checkpoint makes Lightning write `last-v1.ckpt`, `last-v2.ckpt`...

    Lightning's ModelCheckpoint also writes `last.ckpt` when training ends if it never saved before; for a
    step-only checkpoint that save comes after the fit loop has counted the epoch as finished while the
    batch counter still holds the stopped epoch's batches, a state that does not resume mid-epoch
    exactly. The end-of-training state is saved by `model_checkpoint` at the last validation instead."""

    CHECKPOINT_NAME_LAST = "last-step"

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with an epoch count that is right for step-limited runs: Lightning
    prints ``Epoch 0/-2`` when ``max_epochs=-1``; here the last epoch is the one ``max_steps`` ends in."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        text = f"Epoch {current_epoch}"
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs not in (None, -1):
            text += f"/{trainer.max_epochs - 1}"
        elif trainer.max_steps and trainer.max_steps > 0 and isinstance(per_epoch, int) and per_epoch > 0:
            accumulate = max(1, trainer.accumulate_grad_batches)
            steps_per_epoch = max(1, per_epoch // accumulate)
            text += f"/{-(-trainer.max_steps // steps_per_epoch) - 1}"
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"
        return text
