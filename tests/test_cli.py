"""The command line as a user types it: the no-argument run, one-line errors, DDP on CPU, Optuna sweeps."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli

QUIET = ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false"]


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zoo: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["model=gtp"], ["unknown model=gtp", "expected one of", "gpt"]),
        (["data=gpt/nope"], ["unknown data=gpt/nope", "gpt/stdlib"]),
        (["trainer=tpu9"], ["unknown trainer=tpu9", "ddp_sim"]),
        (["experiment=nope"], ["unknown experiment=nope"]),
        (
            ["trainer=cpu", "trainer.precision=16-mixed"],
            ["trainer.precision=16-mixed is not supported on CPU", "bf16-mixed"],
        ),
        (["trainer.precision=8-bit"], ["trainer.precision=8-bit is not supported", "32-true"]),
        (["trainer=gpu"], ["needs a CUDA GPU and none is visible", "trainer=cpu"]),
        (
            ["data=gpt/text_file", "data.path=/no/such/corpus.txt"],
            ["data.path=/no/such/corpus.txt: no such file"],
        ),
        (["data.block_size=0"], ["data.block_size=0 must be a positive integer"]),
        (["trainer.max_steps=-5"], ["trainer.max_steps=-5 must be a positive integer"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_input_is_one_line_error(args, fragments, tmp_path):
    assert_one_line_error(
        run_cli("zoo.train", *args, f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"),
        *fragments,
    )


def test_empty_corpus_is_one_line_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = run_cli(
        "zoo.train",
        "data=gpt/text_file",
        f"data.path={empty}",
        f"hydra.run.dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert_one_line_error(proc, f"data.path={empty}: the file is empty")


def test_model_data_family_mismatch_names_both(tmp_path):
    from zoo.core.cli import available

    foreign = [d for d in available("data") if not d.startswith("gpt/")]
    if not foreign:
        pytest.skip("only one family has data configs")
    proc = run_cli(
        "zoo.train",
        "model=gpt",
        f"data={foreign[0]}",
        f"hydra.run.dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    assert_one_line_error(
        proc, "model=gpt (family 'gpt')", f"data={foreign[0]}", "pick a data=gpt/... config"
    )


@pytest.mark.slow
def test_no_argument_run_trains_and_reports_where_things_went(tmp_path):
    """`python -m zoo.train` with no arguments (steps limited here: the full default is 300 steps)."""
    proc = run_cli("zoo.train", "trainer.max_steps=30", "trainer.val_check_interval=30", "trainer.limit_val_batches=5",
                   env={"ZOO_ROOT": str(tmp_path)}, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 1
    run = run_dirs[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["global_step"] == 30 and metrics["metrics"]["val/loss"] < 5.6
    )  # below uniform over 257 bytes
    assert (run / "checkpoints" / "last.ckpt").is_file() and metrics["best_model_path"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for what in ("checkpoints:", "logs:", "metrics:", str(run / "metrics.json")):
        assert what in proc.stdout
    assert (run / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ddp_sim_trains_with_two_cpu_processes(tmp_path, cache_dir):
    proc = run_cli("zoo.train", "trainer=ddp_sim", "data=gpt/synthetic", "model.net.n_layer=1", "model.net.n_embd=32", "model.net.n_head=2",
                   "data.block_size=32", "data.batch_size=8", "trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.limit_val_batches=4",
                   f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}", "logger=csv", *QUIET, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "world_size: 2" in proc.stderr + proc.stdout
        or "distributed_backend=gloo" in proc.stderr + proc.stdout
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    # Only rank 0 writes: a single checkpoint folder, a single metrics file.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch000-step0000006.ckpt",
        "last.ckpt",
    ]


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path, cache_dir):
    proc = run_cli("zoo.train", "-m", "hparams_search=gpt_optuna", "hydra.sweeper.n_trials=2", "data=gpt/synthetic", "model.net.n_layer=1",
                   "data.block_size=32", "data.batch_size=8", "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=2",
                   f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}", "logger=none", *QUIET, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and set(results["best_params"]) == {
        "model.optim.lr",
        "model.optim.warmup_steps",
        "model.net.n_embd",
    }
    trials = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert results["best_value"] == pytest.approx(min(t["metrics"]["val/loss"] for t in trials))
