"""Callbacks shared by every family (composed by Hydra from conf/callbacks)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

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


def measured_cpu_peak(dtype: str = "fp32", size: int = 1024, seconds: float = 0.3) -> float:
    """Matmul FLOP/s this CPU reaches in `dtype`, measured once per process (the "measured CPU peak")."""
    if dtype not in _measured_cpu_peak:
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        a = torch.randn(size, size, dtype=torch_dtype)
        b = torch.randn(size, size, dtype=torch_dtype)
        a @ b  # warm-up: thread pool and kernel selection
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        _measured_cpu_peak[dtype] = 2 * size**3 * n / (time.perf_counter() - start)
    return _measured_cpu_peak[dtype]


def device_peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where the number comes from) for MFU."""
    dtype = precision_dtype(precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_FLOPS.items():
            if key in name:
                return peaks[dtype], f"{name} datasheet ({dtype})"
        return 0.0, f"{name} (not in GPU_PEAK_FLOPS)"
    return measured_cpu_peak(dtype), f"measured CPU peak ({dtype} matmul)"


def log_grad_norm(module: pl.LightningModule) -> None:
    """Log `train/grad_norm` (global L2 norm) every `log_every_n_steps` optimizer steps.

    Call it from `on_before_optimizer_step`: the gradients are accumulated and not yet clipped there, so
    this is the norm clipping acts on.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads and module.global_step % max(1, module.trainer.log_every_n_steps) == 0:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
        )
        module.log("train/grad_norm", norm, on_step=True, on_epoch=False)


class Throughput(Callback):
    """Logs samples/s, tokens/s and MFU over windows of `log_every_n_steps` training batches.

    The LightningModule describes its batches with ``batch_stats(batch) -> (samples, tokens)`` and may
    give ``flops_per_token`` (forward + backward); without them tokens == samples and MFU is not logged.
    Rates are global: per-rank rates times the world size.
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
        stats = getattr(pl_module, "batch_stats", None)
        samples, tokens = stats(batch) if stats else (len(batch), len(batch))
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
        flops_per_token = getattr(pl_module, "flops_per_token", None)
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
