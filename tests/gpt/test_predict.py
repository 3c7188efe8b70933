"""GPT predictions: `python -m zoo.predict` (and its alias zoo.generate) from a checkpoint, a run folder and
an export folder, prompts files, ONNX export parity and the onnxruntime backend, bad requests in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import exported_run, run_cli, torch_threads
from zoo.core.config import compose_config
from zoo.core.errors import ZooError
from zoo.core.export import export_run
from zoo.core.family import load_run
from zoo.gpt.module import GPTModule

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
TINY = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
        "model.net.n_head=2", "data.block_size=16", "data.batch_size=4"]  # fmt: skip
ALPHABET = set("abcdefghijklmnop")


def train_small_run(root: Path, cache_dir: Path, tiny: list[str] = TINY) -> None:
    """A GPT of the `tiny` shape trained for 3 steps (1 thread) into root/run."""
    from zoo.train import train

    with torch_threads(1):
        cfg = compose_config([*QUIET, *tiny, "trainer.max_steps=3", "trainer.val_check_interval=3",
                              "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}"],
                             output_dir=root / "run")  # fmt: skip
        train(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """A GPT trained for 3 steps (checkpoints, metrics.json) and its export folder (zoo.core.export)."""
    root = tmp_path_factory.mktemp("gpt_predict")
    train_small_run(root, cache_dir)
    return exported_run(root)


def request(tmp: Path, *overrides: str):
    return compose_config(list(overrides), output_dir=tmp / "pred", config_name="predict")


def predict(tmp: Path, *overrides: str):
    from zoo.predict import predict as entry

    return entry(request(tmp, *overrides))


def test_predict_from_checkpoint_run_folder_and_export_agree(trained, tmp_path, capsys):
    greedy = ["prompt=abc", "max_new_tokens=8", "temperature=0", "stop_at_eot=false"]
    texts = {
        name: predict(tmp_path, f"ckpt_path={trained[name]}", *greedy) for name in ("ckpt", "run", "export")
    }
    assert texts["ckpt"] == texts["run"] == texts["export"]
    (text,) = texts["ckpt"]
    assert text.startswith("abc") and len(text) == 11 and set(text) <= ALPHABET
    assert capsys.readouterr().out.count("--- sample 0 ---\n" + text) == 3
    # The export folder alone rebuilds the module, tokenizer included.
    module = GPTModule.from_export(trained["export"])
    assert module.tokenizer_json == load_run(trained["ckpt"]).module.tokenizer_json
    # Seeded sampling is reproducible; another seed may differ but stays in the vocabulary.
    sampled = ["prompt=ab", "max_new_tokens=20", "temperature=1.0", "num_samples=3", "stop_at_eot=false"]
    first = predict(tmp_path, f"ckpt_path={trained['ckpt']}", *sampled, "seed=3")
    assert first == predict(tmp_path, f"ckpt_path={trained['export']}", *sampled, "seed=3")
    assert len(first) == 3 and all(len(t) == 22 and set(t) <= ALPHABET for t in first)


def test_prompts_file_to_jsonl_and_text_output(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc\n\nponm\na\n")  # the blank line is no prompt
    out = tmp_path / "out.jsonl"
    texts = predict(tmp_path, f"ckpt_path={trained['export']}", f"input={prompts}", f"output={out}",
                    "max_new_tokens=5", "num_samples=2", "temperature=0")  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample"], r["prompt"]) for r in records] == [
        (p, s, prompt) for p, prompt in enumerate(["abc", "ponm", "a"]) for s in (0, 1)
    ]
    assert [r["text"] for r in records] == texts
    assert all(r["text"] == r["prompt"] + r["continuation"] and len(r["continuation"]) <= 5 for r in records)
    # One prompt of the file alone continues the same way (greedy): prompts do not leak into each other.
    (alone,) = predict(
        tmp_path, f"ckpt_path={trained['export']}", "prompt=ponm", "max_new_tokens=5", "temperature=0"
    )
    assert alone == records[2]["text"]
    text_out = tmp_path / "out.txt"
    predict(tmp_path, f"ckpt_path={trained['ckpt']}", f"input={prompts}", f"output={text_out}",
            "max_new_tokens=5", "num_samples=2", "temperature=0")  # fmt: skip
    assert text_out.read_text().startswith("--- prompt 0 sample 0 ---\nabc")


def test_generate_is_an_alias_of_predict(trained, tmp_path):
    from zoo.generate import generate

    overrides = [f"ckpt_path={trained['run']}", "prompt=abc", "max_new_tokens=6", "temperature=0"]
    cfg = compose_config(overrides, output_dir=tmp_path / "gen", config_name="generate")
    assert generate(cfg) == predict(tmp_path, *overrides)
    # Without a prompt it samples from an empty context.
    cfg = compose_config([f"ckpt_path={trained['ckpt']}", "max_new_tokens=4", "stop_at_eot=false"],
                         output_dir=tmp_path / "gen", config_name="generate")  # fmt: skip
    (text,) = generate(cfg)
    assert len(text) == 4 and set(text) <= ALPHABET


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [],
            r"^prompt= or input= is required: prompt=\"\.\.\.\" for one prompt, input=prompts.txt for one per line$",
        ),
        (["prompt=ab", "input=p.txt"], r"^prompt= and input=p.txt are both set"),
        (
            ["input=/no/prompts.txt"],
            r"^input=/no/prompts.txt: no such file \(expected a text file of prompts",
        ),
        (["prompt=ab", "max_new_tokens=0"], r"^max_new_tokens=0 must be a positive integer$"),
        (["prompt=ab", "num_samples=-1"], r"^num_samples=-1 must be a positive integer$"),
        (["prompt=ab", "temperature=-0.5"], r"^temperature=-0.5 must be >= 0 \(0: greedy\)$"),
        (["prompt=XYZ"], r"^prompt='XYZ': character 'X' is not in the character vocabulary of this model"),
        (
            ["prompt=ab", "backend=onnx"],
            r"^backend=onnx needs an export folder with model.onnx, not the checkpoint .*"
            r"last.ckpt: run python -m zoo.export ckpt_path=.*last.ckpt format=onnx",
        ),
    ],
)
def test_bad_requests_are_one_line(trained, tmp_path, overrides, message):
    with pytest.raises(ZooError, match=message) as err:
        predict(tmp_path, f"ckpt_path={trained['ckpt']}", *overrides)
    assert "\n" not in str(err.value)


def test_bad_prompt_line_is_named_and_missing_onnx_says_how_to_export(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc\nab!\n")
    with pytest.raises(ZooError, match=r"^input=.*prompts.txt line 2: character '!' is not in the character"):
        predict(tmp_path, f"ckpt_path={trained['ckpt']}", f"input={prompts}")
    with pytest.raises(
        ZooError, match=r"^backend=onnx: .*export has no model.onnx: run python -m zoo.export "
    ):
        predict(tmp_path, f"ckpt_path={trained['export']}", "prompt=ab", "backend=onnx")


# -- ONNX ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_onnx_export_matches_pytorch_and_predicts_the_same(trained, tmp_path):
    """As a user runs it: zoo.export format=onnx prints only where the export went (one interpreter
    start-up, the exporter's cost paid once); then, in-process, onnxruntime's logits against PyTorch's
    and the onnx backend's continuations against the torch backend's."""
    from zoo.gpt.export import OnnxLogits

    folder = tmp_path / "export"
    proc = run_cli("zoo.export", f"ckpt_path={trained['run']}", "format=onnx", f"out={folder}",
                   f"hydra.run.dir={tmp_path / 'exp'}", env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [f"[zoo] export (onnx): {folder}"], proc.stdout
    assert "Warning" not in proc.stderr and "torch.onnx" not in proc.stderr, proc.stderr[-3000:]
    marker = json.loads((folder / "zoo.json").read_text())
    assert marker["formats"] == ["safetensors", "onnx"] and marker["family"] == "gpt"
    assert "backend=onnx" in (folder / "README.md").read_text()
    net = GPTModule.from_export(folder).net
    onnx = OnnxLogits(folder / "model.onnx")
    block = net.cfg.block_size
    g = torch.Generator().manual_seed(0)
    for batch, length in [(1, 1), (3, 5), (2, block)]:  # dynamic batch and window, up to block_size
        idx = torch.randint(0, net.cfg.vocab_size, (batch, length), generator=g)
        with torch.no_grad():
            expected = net(idx)
        got = onnx(idx)
        assert got.shape == expected.shape == (batch, length, net.cfg.vocab_size)
        assert float((got - expected).abs().max()) <= 1e-4
    # Greedy continuations past the window (the context slides): the same text from both backends.
    greedy = [f"ckpt_path={folder}", "prompt=abcd", f"max_new_tokens={block + 4}", "temperature=0",
              "stop_at_eot=false", "num_samples=2"]  # fmt: skip
    torch_texts = predict(tmp_path, *greedy)
    assert predict(tmp_path, *greedy, "backend=onnx") == torch_texts
    assert len(torch_texts[0]) == 4 + block + 4
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc\nmno\n")
    file_request = [f"ckpt_path={folder}", f"input={prompts}", "temperature=0", "max_new_tokens=6"]
    assert predict(tmp_path, *file_request, "backend=onnx") == predict(tmp_path, *file_request)
    # A safetensors re-export into the same folder removes the model.onnx that no longer matches it.
    export_run(GPTModule.from_export(folder), folder, load_run(folder).config)
    assert not (folder / "model.onnx").exists()
    assert json.loads((folder / "zoo.json").read_text())["formats"] == ["safetensors"]
