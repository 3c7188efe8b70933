"""int8 exports (``python -m zoo.export format=onnx quantize=int8``), per family: ``model.int8.onnx``
beside the float graph, zoo.json and the model card name the quantization, ``backend=onnx`` readers run
the int8 graph, and its outputs stay close to the float graph's (tolerances below, per family)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from zoo.core.config import compose_config
from zoo.core.errors import ZooError
from zoo.core.export import export_run
from zoo.core.family import load_run
from zoo.core.onnx import FLOAT_FILE, INT8_FILE, exported_onnx, onnx_session

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
RECIPES = {
    "gpt": ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=2", "model.net.n_embd=64",
            "model.net.n_head=2", "data.block_size=32", "data.batch_size=8", "trainer.max_steps=20",
            "trainer.val_check_interval=20", "trainer.limit_val_batches=1"],
    "events": ["model=event_predictor", "experiment=event_cpu_baseline", "data.synthetic.n_employees=4",
               "data.synthetic.n_weeks=12", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
               "trainer.limit_val_batches=1"],
    "tft": ["experiment=tft_small", "trainer=cpu", "trainer.max_steps=10", "trainer.limit_train_batches=10",
            "trainer.limit_val_batches=2", "data.num_workers=0", "model.plots=false", "++model.calibrate=false"],
}  # fmt: skip
# int8 against float on the same inputs, after a short training (weights still near their initial
# spread): GPT and events compare next-token / next-event probabilities (absolute, on a 0..1 scale), TFT
# its quantile forecasts relative to the forecasts' own spread. The benchmark (benchmarks/quant.py)
# measures what the difference costs in validation quality on trained models.
TOLERANCE = {"gpt": 0.05, "events": 0.05, "tft": 0.05}


@pytest.fixture(scope="module", params=sorted(RECIPES))
def exported(request, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """A short training run of the family and its int8 export (in-process, one torch thread)."""
    from zoo.train import train

    name = request.param
    root = tmp_path_factory.mktemp(f"quant_{name}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            compose_config([*QUIET, *RECIPES[name], f"paths.cache_dir={cache_dir}"], output_dir=root / "run")
        )
        run = load_run(root / "run")
        folder = export_run(
            run.module, root / "export", run.config, "onnx", run_dir=root / "run", quantize="int8"
        )
    finally:
        torch.set_num_threads(threads)
    return {"family": name, "folder": folder, "run": run, "run_dir": root / "run"}


def _outputs(session, feeds: dict) -> list[np.ndarray]:
    return session.run(None, feeds)


def _feeds(family: str, folder: Path, run) -> dict[str, np.ndarray]:
    """Real-shaped inputs of the exported graph: what the family's onnx reader feeds it."""
    g = torch.Generator().manual_seed(0)
    if family == "gpt":
        net = run.module.net
        return {"idx": torch.randint(0, net.cfg.vocab_size, (4, net.cfg.block_size), generator=g).numpy()}
    if family == "events":
        from zoo.events.export import example_inputs

        src, src_len, tgt = example_inputs(run.module.net, 8, run.module.net.tgt_len, seed=3)
        return {"src": src.numpy(), "src_len": src_len.numpy(), "tgt_in": tgt.numpy()}
    from zoo.tft.export import ONNX_INPUTS, example_windows

    return {k: v.numpy() for k, v in zip(ONNX_INPUTS, example_windows(run.module, 8, seed=3))}


@pytest.mark.slow
def test_int8_export_is_recorded_picked_and_close_to_float(exported):
    family, folder = exported["family"], exported["folder"]
    assert (folder / FLOAT_FILE).is_file() and (folder / INT8_FILE).is_file()
    # The float graph carries its weights (no data file named after the exporter's temporary file).
    assert not list(folder.glob("*.data")), sorted(p.name for p in folder.iterdir())
    marker = json.loads((folder / "zoo.json").read_text())
    assert marker["onnx"]["quantize"] == "int8" and marker["onnx"]["file"] == INT8_FILE
    assert marker["formats"] == ["safetensors", "onnx"]
    card = (folder / "README.md").read_text()
    assert "- quantization: int8 (`model.int8.onnx`" in card and "quantize_dynamic" in card
    # The readers' path (model.onnx) resolves to the int8 graph; quantized=False keeps the float one.
    assert exported_onnx(folder / FLOAT_FILE) == folder / INT8_FILE
    feeds = _feeds(family, folder, exported["run"])
    picked = _outputs(onnx_session(folder / FLOAT_FILE), feeds)
    int8 = _outputs(onnx_session(folder / INT8_FILE), feeds)
    fp32 = _outputs(onnx_session(folder / FLOAT_FILE, quantized=False), feeds)
    for a, b in zip(picked, int8, strict=True):
        np.testing.assert_array_equal(a, b)
    # Linear layers really run in int8: the graph has integer matmuls and is not the float graph.
    import onnx

    ops = {n.op_type for n in onnx.load(str(folder / INT8_FILE)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    assert any(float(np.abs(a - b).max()) > 0 for a, b in zip(int8, fp32))
    for a, b in zip(int8, fp32, strict=True):
        if family == "gpt":  # logits -> probabilities
            a, b = (
                torch.softmax(torch.from_numpy(a), -1).numpy(),
                torch.softmax(torch.from_numpy(b), -1).numpy(),
            )
        scale = float(b.std()) if family == "tft" else 1.0
        assert float(np.abs(a - b).max()) <= TOLERANCE[family] * scale, (family, float(np.abs(a - b).max()))


@pytest.mark.slow
def test_family_readers_run_int8_and_a_float_reexport_drops_it(exported):
    """The family's ``backend=onnx`` reader, pointed at ``model.onnx`` as zoo.predict points it, runs the
    int8 graph; a float re-export removes the int8 graph and its record (it would no longer match the
    weights: core code, checked on the family whose export is quickest)."""
    family, folder, run = exported["family"], exported["folder"], exported["run"]
    int8 = onnx_session(folder / INT8_FILE)
    feeds = _feeds(family, folder, run)
    if family == "gpt":
        from zoo.gpt.export import OnnxLogits

        got = [OnnxLogits(folder / FLOAT_FILE)(torch.from_numpy(feeds["idx"])).numpy()]
    elif family == "events":
        from zoo.events.export import OnnxEvents

        probs, time = OnnxEvents(folder / FLOAT_FILE, list(run.module.names))(
            *(torch.from_numpy(feeds[k]) for k in ("src", "src_len", "tgt_in"))
        )
        got = [p.numpy() for p in probs] + ([time.numpy()] if time is not None else [])
    else:
        from zoo.tft.export import OnnxForecaster

        got = [OnnxForecaster(folder / FLOAT_FILE, run.module).session.run(None, feeds)[0]]
    for a, b in zip(got, int8.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    if family != "gpt":
        return
    # As a user runs it: one line saying where the int8 export went.
    cli = folder.parent / "cli"
    proc = run_cli("zoo.export", f"ckpt_path={exported['run_dir']}", "format=onnx", "quantize=int8", f"out={cli}",
                   f"hydra.run.dir={folder.parent / 'exp'}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [f"[zoo] export (onnx, int8): {cli}"], proc.stdout
    assert json.loads((cli / "zoo.json").read_text())["onnx"]["file"] == INT8_FILE
    export_run(run.module, folder, run.config, "onnx")
    assert not (folder / INT8_FILE).exists()
    assert "onnx" not in json.loads((folder / "zoo.json").read_text())
    assert "quantization" not in (folder / "README.md").read_text()
    assert exported_onnx(folder / FLOAT_FILE) == folder / FLOAT_FILE


def test_quantize_needs_onnx_and_a_known_type(tmp_path):
    from zoo.gpt.model import GPT, GPTConfig
    from zoo.gpt.module import GPTModule

    module = GPTModule.__new__(GPTModule)  # the checks come before anything is written
    torch.nn.Module.__init__(module)
    module.net = GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ZooError, match=r"^quantize=int8 quantizes the ONNX graph: add format=onnx"):
        export_run(module, tmp_path, {}, "safetensors", quantize="int8")
    with pytest.raises(ZooError, match=r"^quantize=fp16: expected one of none, int8$"):
        export_run(module, tmp_path, {}, "onnx", quantize="fp16")
    assert not list(tmp_path.iterdir())


def test_a_marker_naming_another_file_is_not_followed(tmp_path):
    """zoo.json is read from an export folder a user points at: only the int8 file beside it is picked."""
    (tmp_path / FLOAT_FILE).write_bytes(b"x")
    (tmp_path / "evil.onnx").write_bytes(b"x")
    for named in ("evil.onnx", "../model.onnx", "/etc/passwd"):
        (tmp_path / "zoo.json").write_text(json.dumps({"onnx": {"file": named}}))
        assert exported_onnx(tmp_path / FLOAT_FILE) == tmp_path / FLOAT_FILE
    (tmp_path / "zoo.json").write_text("not json")
    assert exported_onnx(tmp_path / FLOAT_FILE) == tmp_path / FLOAT_FILE
