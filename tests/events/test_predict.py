"""Event predictions: `python -m zoo.predict input=history.csv` from a checkpoint, a run folder and an
export folder, ONNX export parity and the onnxruntime backend, bad requests in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import exported_run, run_cli, torch_threads
from zoo.core.config import compose_config
from zoo.core.errors import ZooError
from zoo.core.family import load_run
from zoo.events.module import EventModule

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
MAPPING = ["data.columns.case_id=Case", "data.columns.timestamp=When", "data.columns.activity=Task",
           "data.columns.resource=Who"]  # fmt: skip


def event_log(n_cases: int) -> pd.DataFrame:
    rows = []
    for c in range(n_cases):
        start = pd.Timestamp("2024-01-01T09:00:00Z") + pd.Timedelta(hours=7 * c)
        for i, act in enumerate(
            [["Open", "Fix", "Close"], ["Open", "Reject"], ["Open", "Triage", "Fix", "Close"]][c % 3]
        ):
            rows.append({"Case": f"C{c}", "Task": act, "When": (start + pd.Timedelta(hours=5 * i)).isoformat(),
                         "Who": f"u{c % 3}"})  # fmt: skip
    return pd.DataFrame(rows)


def train_small_run(root: Path, cache_dir: Path) -> None:
    """An event predictor trained briefly (1 thread) on a small log with source column names in root/run, and
    root/history.csv: a few cases' first events, one by a resource training never saw."""
    from zoo.train import train

    event_log(60).to_csv(root / "log.csv", index=False)
    history = event_log(6).groupby("Case").head(2)
    history.loc[history.index[0], "Who"] = "someone-new"  # never seen in training: <unk>, counted
    history.to_csv(root / "history.csv", index=False)
    with torch_threads(1):
        cfg = compose_config([*QUIET, "model=event_predictor", "experiment=event_cpu_baseline", "data=events/file",
                              f"data.path={root / 'log.csv'}", *MAPPING, "trainer.max_epochs=2",
                              "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
                              f"paths.cache_dir={cache_dir}"], output_dir=root / "run")  # fmt: skip
        train(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """An event predictor trained briefly on a small log with source column names, and its export."""
    root = tmp_path_factory.mktemp("events_predict")
    train_small_run(root, cache_dir)
    return {**exported_run(root), "history": root / "history.csv"}


def predict(tmp: Path, *overrides: str) -> pd.DataFrame:
    from zoo.predict import predict as entry

    return entry(compose_config(list(overrides), output_dir=tmp, config_name="predict"))


def test_predict_from_checkpoint_run_folder_and_export_agree(trained, tmp_path, capsys):
    frames = {
        name: predict(tmp_path / name, f"ckpt_path={trained[name]}", f"input={trained['history']}", "k=3")
        for name in ("ckpt", "run", "export")
    }
    pd.testing.assert_frame_equal(frames["ckpt"], frames["run"])
    pd.testing.assert_frame_equal(frames["ckpt"], frames["export"])
    pred = frames["export"]
    assert set(pred["case_id"]) == {f"C{c}" for c in range(6)}
    assert {"step", "Activity", "Activity_p", "Resource", "Resource_p"} <= set(pred.columns)
    assert pred["Activity_p"].between(0, 1).all() and pred.groupby("case_id")["step"].max().le(3).all()
    # Written where the run's output folder is, with the summary and the unknown values counted.
    on_disk = pd.read_csv(tmp_path / "export" / "predictions.csv")
    assert len(on_disk) == len(pred)
    summary = json.loads((tmp_path / "export" / "predict_summary.json").read_text())
    assert summary["unknown_values"] == {"Resource": 1} and summary["backend"] == "torch"
    assert "1 input values never seen in training were read as <unk> (Resource: 1)" in capsys.readouterr().out


def test_from_export_rebuilds_the_module(trained):
    module = EventModule.from_export(trained["export"])
    trained_module = load_run(trained["ckpt"]).module
    assert module.vocab == trained_module.vocab and module.names == trained_module.names
    src = torch.full((2, module.net.src_len, len(module.names)), 4, dtype=torch.long)
    lengths, tgt = torch.tensor([3, 1]), torch.full((2, 2, len(module.names)), 4, dtype=torch.long)
    with torch.no_grad():
        for a, b in zip(module(src, lengths, tgt)[0], trained_module(src, lengths, tgt)[0]):
            torch.testing.assert_close(a, b)


def test_sampling_is_seeded(trained, tmp_path):
    args = [f"ckpt_path={trained['export']}", f"input={trained['history']}", "k=3", "sampling=sample",
            "temperature=1.5"]  # fmt: skip
    a = predict(tmp_path / "a", *args, "seed=1")
    pd.testing.assert_frame_equal(a, predict(tmp_path / "b", *args, "seed=1"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["k=0"], r"^k=0 must be a positive integer$"),
        (["sampling=beam"], r"^sampling=beam: expected greedy or sample$"),
        (["k=50"], r"^k=50 is more than the model's target window \(data.tgt_seq_len=\d+\)$"),
        (["input=null"], r"^input= is required: an event history \(.csv, .parquet or .xes\)"),
        (
            ["backend=onnx"],
            r"^backend=onnx needs an export folder with model.onnx, not the checkpoint .*last.ckpt: "
            r"run python -m zoo.export ckpt_path=.*last.ckpt format=onnx",
        ),
    ],
)
def test_bad_requests_are_one_line(trained, tmp_path, overrides, message):
    with pytest.raises(ZooError, match=message) as err:
        predict(tmp_path, f"ckpt_path={trained['ckpt']}", f"input={trained['history']}", *overrides)
    assert "\n" not in str(err.value)


def test_export_without_onnx_says_how_to_export(trained, tmp_path):
    with pytest.raises(
        ZooError, match=r"^backend=onnx: .*export has no model.onnx: run python -m zoo.export "
    ):
        predict(tmp_path, f"ckpt_path={trained['export']}", f"input={trained['history']}", "backend=onnx")


# -- ONNX ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_onnx_export_matches_pytorch_and_predicts_the_same(trained, tmp_path):
    """As a user runs it: zoo.export format=onnx prints only where the export went (one interpreter
    start-up, the exporter's cost paid once); then, in-process, onnxruntime's probabilities against
    PyTorch's and the onnx backend's predictions against the torch backend's."""
    from zoo.events.export import NextEventDistributions, OnnxEvents, example_inputs

    folder = tmp_path / "export"
    proc = run_cli("zoo.export", f"ckpt_path={trained['ckpt']}", "format=onnx", f"out={folder}",
                   f"hydra.run.dir={tmp_path / 'exp'}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [f"[zoo] export (onnx): {folder}"], proc.stdout
    assert "Warning" not in proc.stderr and "torch.onnx" not in proc.stderr, proc.stderr[-3000:]
    assert json.loads((folder / "zoo.json").read_text())["formats"] == ["safetensors", "onnx"]
    card = (folder / "README.md").read_text()
    assert "# zoo events model" in card and "backend=onnx" in card
    module = EventModule.from_export(folder)
    wrapper = NextEventDistributions(module.net).eval()
    onnx = OnnxEvents(folder / "model.onnx", module.names)
    for batch, steps in [(1, 1), (4, 3), (2, module.net.tgt_len)]:  # dynamic batch and target length
        inputs = example_inputs(module.net, batch, steps, seed=batch)
        with torch.no_grad():
            expected = wrapper(*inputs)
        probs, time = onnx(*inputs)
        assert len(probs) == len(module.names) and time is not None
        for got, want in zip([*probs, time], expected, strict=True):
            assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-4
        assert torch.allclose(probs[0].sum(-1), torch.ones(batch, steps), atol=1e-5)
    history = [f"input={trained['history']}", "k=3"]
    torch_pred = predict(tmp_path / "torch", f"ckpt_path={folder}", *history)
    onnx_pred = predict(tmp_path / "onnx", f"ckpt_path={folder}", *history, "backend=onnx")
    assert set(onnx_pred["case_id"]) == {f"C{c}" for c in range(6)}
    values = [
        c for c in torch_pred.columns if not c.endswith("_p") and c not in ("days_to_event", "predicted_time")
    ]
    pd.testing.assert_frame_equal(onnx_pred[values], torch_pred[values])
    for column in [c for c in torch_pred.columns if c.endswith("_p")] + ["days_to_event"]:
        assert (onnx_pred[column] - torch_pred[column]).abs().max() <= 1e-4, column
    assert json.loads((tmp_path / "onnx" / "predict_summary.json").read_text())["backend"] == "onnx"
