"""Fault tolerance (docs/reliability.md): exact resume after SIGKILL for every family, atomic checkpoint
writes, corrupt or foreign checkpoints, `ckpt_path=last`, resuming with changed settings, divergence."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run_cli
from zoo.core.checkpoint import atomic_torch_save, load_checkpoint, resolve_ckpt_path
from zoo.core.errors import ZooError
from zoo.train import train

QUIET = [
    "~callbacks.rich_progress_bar",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]

# Two epochs of 7 steps, validated after each; `last-step.ckpt` every 3 steps. The kill comes at step 5, so the
# resume starts mid-epoch from step 3 and crosses a validation and an epoch boundary before step 14.
SCHEDULE = [
    "trainer.max_steps=14",
    "trainer.max_epochs=null",
    "trainer.limit_train_batches=7",
    "trainer.val_check_interval=null",
    "trainer.check_val_every_n_epoch=1",
    "trainer.limit_val_batches=3",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    "logger=csv",
]
KILL_AT, RESUMED_FROM = 5, 3

# Dropout stays on: the resumed run must draw the same dropout masks (RNG state in the checkpoint).
FAMILIES = {
    "gpt": (["data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
             "model.net.dropout=0.1", "data.block_size=32", "data.batch_size=8"], "val/loss"),
    # The modern recipe options with Muon + AdamW as one optimizer (zoo.core.optim.MuonWithAdamW).
    "gpt-muon": (["data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
                  "model.net.dropout=0.1", "data.block_size=32", "data.batch_size=8", "model.optim.name=muon",
                  "model.net.qk_norm=true", "model.net.activation=relu2", "model.net.zero_init_proj=true",
                  "model.net.logit_softcap=15", "model.net.rope=true"], "val/loss"),
    "events": (["model=event_predictor", "data.batch_size=16"], "val/loss"),
    "tft": (["experiment=tft_small", "data.num_workers=0", "data.batch_size=16"], "val/loss"),
    # The weight average too (validated and saved averaged; the raw weights resume from the checkpoint).
    "tft-ema": (["experiment=tft_small", "data.num_workers=0", "data.batch_size=16", "callbacks=[default,ema]"],
                "val/loss"),
}  # fmt: skip


def _run(run_dir: Path, cache: Path, losses: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "zoo.train",
        *QUIET,
        "+callbacks.record._target_=tests.faults.RecordLoss",  # before KillAtStep: the last step is recorded
        f"+callbacks.record.path={losses}",
        *extra,
        *SCHEDULE,
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={cache}",
        env={"OMP_NUM_THREADS": "1"},  # one thread: the same reduction order in every process
    )


def _losses(path: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed step overwrites the killed run's record of it
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sigkill_then_resume_is_bit_exact(family, tmp_path):
    overrides, metric = FAMILIES[family]
    cache = tmp_path / "cache"
    a = _run(tmp_path / "a", cache, tmp_path / "a.jsonl", *overrides)
    assert a.returncode == 0, a.stderr[-2000:]

    killed = _run(
        tmp_path / "b", cache, tmp_path / "b1.jsonl", *overrides,
        "+callbacks.kill._target_=tests.faults.KillAtStep", f"+callbacks.kill.step={KILL_AT}",
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert max(_losses(tmp_path / "b1.jsonl")) == KILL_AT
    saved = torch.load(
        tmp_path / "b" / "checkpoints" / "last-step.ckpt", weights_only=True, map_location="cpu"
    )
    assert saved["global_step"] == RESUMED_FROM
    assert ("current_model_state" in saved) == family.endswith("-ema")  # EMA: averaged and raw weights

    resumed = _run(tmp_path / "b", cache, tmp_path / "b2.jsonl", *overrides, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"resuming from {tmp_path / 'b' / 'checkpoints' / 'last-step.ckpt'} (step {RESUMED_FROM})"
        in resumed.stdout
    )

    full, after = _losses(tmp_path / "a.jsonl"), _losses(tmp_path / "b2.jsonl")
    assert sorted(after) == list(range(RESUMED_FROM + 1, 15))
    assert {s: full[s] for s in after} == after  # bit-exact, step by step
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["global_step"] == mb["global_step"] == 14
    assert not list((tmp_path / "a" / "checkpoints").glob("last-v*"))  # no versioned copies of last.ckpt
    assert math.isfinite(ma["metrics"][metric])
    assert {k: v for k, v in mb["metrics"].items() if k.startswith("val/")} == {
        k: v for k, v in ma["metrics"].items() if k.startswith("val/")
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_during_a_large_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.arange(10.0)}, "global_step": 7}, path)
    before = _sha(path)
    # A child writes a ~400 MB checkpoint over it and is killed while the bytes are still going out.
    code = (
        "import torch, sys; from zoo.core.checkpoint import atomic_torch_save; "
        "atomic_torch_save({'state_dict': {'w': torch.zeros(100_000_000)}, 'global_step': 8}, sys.argv[1])"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        partial = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
        if partial and partial[0].stat().st_size > 10_000_000:
            break
        time.sleep(0.005)
    assert child.poll() is None, "the save finished before it could be interrupted"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert _sha(path) == before
    assert load_checkpoint(path)["global_step"] == 7


def test_truncated_and_foreign_checkpoints_are_one_line_errors(tmp_path, compose):
    good = tmp_path / "good.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(1000)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(
        ZooError, match=r"ckpt_path=.*truncated.ckpt: not a readable checkpoint .*expected a complete \.ckpt"
    ):
        load_checkpoint(truncated)

    # Any pickled class beyond tensors and plain containers could run code when loaded.
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "x": argparse.Namespace(a=1)}, foreign)
    with pytest.raises(ZooError, match=r"foreign.ckpt: not a readable checkpoint \(it holds Python objects"):
        load_checkpoint(foreign)

    # Through the entry point, before any training starts.
    cfg = compose(
        *QUIET, "data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", f"ckpt_path={truncated}"
    )
    with pytest.raises(ZooError, match="not a readable checkpoint"):
        train(cfg)
    proc = run_cli(
        "zoo.train", *QUIET, "data=gpt/synthetic", f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'r'}"
    )
    lines = proc.stderr.strip().splitlines()
    assert (
        proc.returncode == 2
        and lines[-1].startswith("zoo: error: ckpt_path=")
        and "Traceback" not in proc.stderr
    )


def test_ckpt_path_last_finds_the_newest_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    old, new, current = (
        runs / "2026-01-01_00-00-00",
        runs / "2026-01-02_00-00-00",
        runs / "2026-01-03_00-00-00",
    )
    for i, run in enumerate((old, new)):
        (run / "checkpoints").mkdir(parents=True)
        for name in ("epoch000-step0000005.ckpt", "last.ckpt"):
            (run / "checkpoints" / name).write_bytes(b"x")
            os.utime(run / "checkpoints" / name, ns=(10**18 + i * 10**9,) * 2)
        os.utime(run, ns=(10**18 + i * 10**9,) * 2)
    (new / "checkpoints" / "last.ckpt.partial-123").write_bytes(b"half")  # a write that was killed
    current.mkdir()
    assert resolve_ckpt_path("last", current, runs) == str(new / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path(str(old), current, runs) == str(old / "checkpoints" / "last.ckpt")
    assert resolve_ckpt_path("auto", tmp_path / "elsewhere", None) is None
    with pytest.raises(ZooError, match="ckpt_path=last: no checkpoint found in .*elsewhere"):
        resolve_ckpt_path("last", tmp_path / "elsewhere", None)


TINY = ["data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
        "data.block_size=32", "data.batch_size=8", "trainer.limit_val_batches=1"]  # fmt: skip


def test_resuming_with_other_settings_names_what_differs(compose, tmp_path):
    cfg = compose(*QUIET, *TINY, "trainer.max_steps=2", "trainer.val_check_interval=2")
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = _sha(ckpt)
    other = compose(*QUIET, *TINY, "model.net.n_embd=64", "trainer.max_steps=4", f"ckpt_path={ckpt}")
    with pytest.raises(
        ZooError, match=r"was trained with model\.net\.n_embd=32 \(now 64\): resume with the original"
    ):
        train(other)
    longer = compose(
        *QUIET, *TINY, "trainer.max_steps=4", "trainer.val_check_interval=2", f"ckpt_path={ckpt}"
    )
    train(longer)  # a longer schedule is a legitimate resume
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 4
    assert before != _sha(ckpt)


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_non_finite_loss_stops_or_skips(compose, tmp_path, monkeypatch, action):
    from zoo.gpt.module import GPTModule

    original = GPTModule._loss

    def poisoned(self, batch, reduction="mean"):
        loss = original(self, batch, reduction)
        return loss * float("nan") if self.training and self.global_step == 4 else loss

    monkeypatch.setattr(GPTModule, "_loss", poisoned)
    cfg = compose(*QUIET, *TINY, "trainer.max_steps=6", "trainer.val_check_interval=6",
                  "callbacks.step_checkpoint.every_n_train_steps=2",
                  f"callbacks.divergence.action={action}")  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last-step.ckpt"
    if action == "stop":
        with pytest.raises(
            ZooError, match=rf"diverged at step 5 .*last good checkpoint: {ckpt} \(left intact\)"
        ):
            train(cfg)
        saved = load_checkpoint(ckpt)
        assert saved["global_step"] == 4
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    else:
        _, metrics = train(cfg)
        assert metrics["train/skipped_batches"] == 1.0 and math.isfinite(metrics["val/loss"])
        saved = load_checkpoint(ckpt)
        assert saved["global_step"] == 6
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
