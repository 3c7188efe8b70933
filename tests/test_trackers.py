"""Trackers: ``logger=[tensorboard,mlflow]`` and ``logger=[tensorboard,wandb]`` runs read back with each
library's own reader, ``callbacks=[default,device_stats]`` with every family, and the lines ``zoo.train``
prints about where each tracker wrote. One short run per family: GPT with MLflow, events with W&B, TFT
with CSV; each also carries the device statistics callback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch

from zoo.core.config import compose_config

QUIET = ["~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks=[default,device_stats]", "trainer.log_every_n_steps=1"]  # fmt: skip
GPT = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
       "model.net.n_head=2", "data.block_size=16", "data.batch_size=4", "trainer.max_steps=4",
       "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]  # fmt: skip
EVENTS = ["model=event_predictor", "experiment=event_cpu_baseline", "data.synthetic.n_employees=4",
          "data.synthetic.n_weeks=12", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
          "trainer.limit_val_batches=1"]  # fmt: skip
TFT = ["experiment=tft_small", "trainer=cpu", "trainer.max_steps=3", "trainer.limit_train_batches=3",
       "trainer.limit_val_batches=1", "data.num_workers=0", "model.plots=false", "++model.calibrate=false"]  # fmt: skip
DEVICE_STAT = "DeviceStatsMonitor.on_train_batch_start/cpu_percent"


def _train(root: Path, cache_dir: Path, *overrides: str) -> Path:
    from zoo.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([*QUIET, *overrides, f"paths.cache_dir={cache_dir}"], output_dir=root))
    finally:
        torch.set_num_threads(threads)
    return root


def _printed(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(f"[zoo] {name}:")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


@pytest.mark.slow
def test_mlflow_run_has_params_metric_history_and_best_checkpoint(tmp_path, cache_dir, capsys):
    from mlflow import MlflowClient

    run_dir = _train(tmp_path / "run", cache_dir, *GPT, "logger=[tensorboard,mlflow]")
    line = _printed(capsys.readouterr().out, "mlflow")
    store = run_dir / "mlflow" / "mlflow.db"
    assert store.is_file() and f"sqlite:///{store}" in line  # the local store, inside the run folder
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "zoo-train"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert f"run {run.info.run_id}" in line and run.info.status == "FINISHED"
    assert run.data.params["net/n_embd"] == "16" and run.data.params["net/n_layer"] == "1"
    history = client.get_metric_history(run.info.run_id, "val/loss")  # the monitored metric, per validation
    assert [m.step for m in history][:2] == [1, 3] and all(m.value > 0 for m in history)
    assert DEVICE_STAT in run.data.metrics
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = Path(metrics["best_model_path"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert best.stem in artifacts, artifacts  # log_model: the best checkpoint, under its own name
    files = {a.path for a in client.list_artifacts(run.info.run_id, best.stem)}
    assert f"{best.stem}/{best.name}" in files
    local = Path(client.download_artifacts(run.info.run_id, f"{best.stem}/{best.name}", str(tmp_path / "dl")))
    assert local.read_bytes() == best.read_bytes()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard alongside


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` transaction log (wandb >= 0.2x writes it from its Go core and no
    longer ships the Python reader): a 7-byte header (``:W&B``, magic, version), then LevelDB log
    framing (32 KiB blocks; each chunk: crc32c, length, type FULL/FIRST/MIDDLE/LAST), each record a
    ``wandb_internal_pb2.Record`` parsed with W&B's own protobuf definitions."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


@pytest.mark.slow
def test_wandb_offline_run_has_config_and_history(tmp_path, cache_dir, capsys):
    import wandb

    try:
        run_dir = _train(tmp_path / "run", cache_dir, *EVENTS, "logger=[tensorboard,wandb]")
    finally:
        wandb.teardown()  # the wandb-core service this process started
    line = _printed(capsys.readouterr().out, "wandb")
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    assert str(folder) in line and "offline" in line and f"wandb sync {folder}" in line
    (log,) = folder.glob("run-*.wandb")
    config, history = {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
    assert config["net"]["d_model"] == 32, sorted(config)[:20]  # the recipe's width, as the module saved it
    val = [h for h in history if "val/next_acc" in h]
    assert len(val) == 2 and all(0 <= h["val/next_acc"] <= 1 for h in val)  # one per epoch
    assert any(DEVICE_STAT in h for h in history)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_device_stats_with_tft_on_csv(tmp_path, cache_dir, capsys):
    run_dir = _train(tmp_path / "run", cache_dir, *TFT, "logger=csv")
    frame = pd.read_csv(run_dir / "csv" / "metrics.csv")
    stats = frame[DEVICE_STAT].dropna()
    assert len(stats) == 3 and stats.between(0, 100).all()
    assert "DeviceStatsMonitor.on_train_batch_start/cpu_vm_percent" in frame.columns
    out = capsys.readouterr().out
    assert "[zoo] mlflow:" not in out and "[zoo] wandb:" not in out
