"""Distributed equivalence (docs/distributed.md): `trainer=ddp_sim` (2 CPU processes over gloo, half the
batch per rank) reaches the validation metrics of one process with the same global batch, and only rank 0
writes into the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

QUIET = ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", "logger=csv"]

# Relative tolerance on every compared validation metric. Measured on 2 vCPU (docs/distributed.md): the
# runs agree to <= 2.3e-7 relative (float32 summation order: a 32-sample matmul vs two 16-sample ones
# averaged by all-reduce; GPT and the TFT loss agree bit for bit), so 5e-6 leaves a 20x margin. The bugs
# this guards against are far above it: averaging per-rank event means instead of weighting them by
# their events (events, 3e-5 after 30 steps) and Lightning's integer-averaged window count under gloo
# (TFT, 8e-3).
REL_TOL = 5e-6

# Per family: overrides shared by both runs, the global batch, the metrics compared, the checkpoint
# folder's expected files. 30 optimizer steps; dropout 0 because every rank draws its own dropout masks,
# so with dropout the runs would differ by sampling noise rather than by any reduction.
FAMILIES = {
    # block_size 33 tiles the validation split into 1213 windows (the last one short): the shards are
    # uneven (607/606) and the loss must be weighted by tokens across ranks.
    "gpt": (
        ["data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
         "model.optim.warmup_steps=5", "data.block_size=33", "trainer.max_steps=30",
         "trainer.val_check_interval=30", "trainer.limit_val_batches=null"],
        16,
        ["val/loss", "val/bpb"],
        ["epoch000-step0000030.ckpt", "last.ckpt"],
    ),
    # Target windows end with their case, so ranks' batches hold different numbers of target events.
    "events": (
        ["model=event_predictor", "model.net.dropout=0.0", "trainer.max_epochs=null", "trainer.max_steps=30",
         "trainer.val_check_interval=30"],
        32,
        ["val/loss", "val/time_mae_days"],
        ["epoch000-step0000030.ckpt", "last.ckpt", "schema.json", "vocab.json"],
    ),
    # 3 epochs of 10 batches, validated after each (129 windows: uneven shards, 65/64), the plateau
    # scheduler watching val/loss; plots on, to see that only rank 0 draws them.
    "tft": (
        ["experiment=tft_small", "model.net.dropout=0.0", "trainer.max_steps=30", "data.num_workers=0"],
        32,
        ["val/loss", "val/mae/cpu_percent", "val/mae/memory_percent", "val/mae/disk_percent",
         "val/mae/load_average"],
        ["epoch002-step0000030.ckpt", "last.ckpt"],
    ),
}  # fmt: skip


def _train(cwd: Path, run: Path, cache_dir: Path, *overrides: str) -> str:
    # One thread per process: the DDP run puts 2 processes on the 2 cores, and the single run is kept
    # on the same kernels so that the comparison measures reductions, not threading.
    proc = run_cli("zoo.train", *overrides, *QUIET, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run}",
                   cwd=cwd, timeout=300, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ddp_sim_matches_single_process_and_only_rank0_writes(family, tmp_path, cache_dir):
    overrides, batch, compared, checkpoints = FAMILIES[family]
    # Started from an empty folder: a rank that ignored hydra.run.dir would leave its run folder here.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _train(cwd, single, cache_dir, *overrides, f"data.batch_size={batch}")
    output = _train(cwd, ddp, cache_dir, *overrides, "trainer=ddp_sim", f"data.batch_size={batch // 2}")
    assert "Starting with 2 processes" in output and "GLOBAL_RANK: 1" in output

    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert a["global_step"] == b["global_step"] == 30
    for name in compared:
        assert b["metrics"][name] == pytest.approx(a["metrics"][name], rel=REL_TOL), name

    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == checkpoints
    # One metrics.json, one csv logger folder, the same checkpoints, export and plots as the single run:
    # nothing duplicated or rank-suffixed, and nothing written outside the run folder.
    assert _files(ddp) == _files(single)
    assert [p.name for p in ddp.rglob("metrics.json")] == ["metrics.json"]
    assert sorted(p.name for p in (ddp / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    assert list(cwd.iterdir()) == []
