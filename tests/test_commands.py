"""The commands as the README types them: ``--help`` names the command and lists its options, ``prompt=``
reaches the model verbatim (``prompt="def main("``), a value Hydra cannot parse gets a one-line quoting hint,
and ``zoo.export`` without ``out=`` writes into the run's ``export/`` folder, where ``zoo.predict`` looks."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from zoo.core.cli import split_free_text
from zoo.core.config import compose_config

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
HYDRA_COMMANDS = ["train", "eval", "predict", "generate", "export", "monitor", "serve"]


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A 1-layer byte-level GPT trained for 2 steps on a little Python (any prompt text is in its vocabulary)."""
    from zoo.train import train

    root = tmp_path_factory.mktemp("commands")
    corpus = root / "corpus.txt"
    corpus.write_text("def main(argv):\n    return {'a': [1, 2], 'b': (3, 4)}\n" * 400)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([*QUIET, "data=gpt/text_file", f"data.path={corpus}", "data.tokenizer=byte",
                              "model.net.n_layer=1", "model.net.n_embd=16", "model.net.n_head=2", "data.block_size=16",
                              "data.batch_size=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
                              "trainer.limit_val_batches=1", "export=false", f"paths.cache_dir={cache_dir}"],
                             output_dir=root / "run"))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return root / "run"


@pytest.mark.parametrize("name", HYDRA_COMMANDS)
def test_help_names_the_command_and_lists_what_a_user_picks(name):
    if name == "serve" and importlib.util.find_spec("zoo.serve") is None:
        pytest.skip("zoo.serve is not on this branch")
    proc = run_cli(f"zoo.{name}", "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith(f"python -m zoo.{name}"), out[:200]
    assert "powered by Hydra" not in out and "cli" not in out.split("\n")[0]
    assert not re.search(r"\b_base\b|/_base|_schema_", out), out
    expected = (
        ["model=", "experiment=", "trainer=", "data=", "ckpt_path="] if name == "train" else ["ckpt_path="]
    )
    for option in expected:
        assert f"\n  {option}" in out, (option, out)
    if name in ("predict", "generate"):
        assert "prompt= reaches the model exactly as typed" in " ".join(out.split())


def test_collect_help_names_the_command():
    proc = run_cli("zoo.collect", "--help", timeout=60)
    assert proc.returncode == 0 and "zoo.collect" in proc.stdout and "interval=" in proc.stdout


def test_free_text_keys_are_taken_out_of_hydras_reach():
    argv = ["ckpt_path=x", "prompt=def main(", "temperature=0", "prompt=  two (spaces) "]
    assert split_free_text(argv) == (["ckpt_path=x", "temperature=0"], {"prompt": "  two (spaces) "})


def test_prompt_reaches_the_model_as_the_readme_types_it(byte_run, tmp_path):
    for prompt in ("def main(", "{'a': [1, 2]", "123", " x=1, y: 2 "):
        out = tmp_path / "out.jsonl"
        proc = run_cli("zoo.predict", f"ckpt_path={byte_run}", f"prompt={prompt}", "max_new_tokens=3", "temperature=0",
                       "stop_at_eot=false", f"output={out}", f"hydra.run.dir={tmp_path / 'p'}", timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        (row,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert row["text"].startswith(prompt) and len(row["text"]) > len(prompt), (prompt, row)


def test_prompt_is_refused_by_a_command_without_one(byte_run, tmp_path):
    proc = run_cli("zoo.eval", f"ckpt_path={byte_run}", "prompt=hi", f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2 and "zoo: error: prompt=hi: not a key of the eval command" in proc.stderr


def test_a_value_hydra_cannot_parse_gets_a_quoting_hint(tmp_path):
    proc = run_cli(
        "zoo.predict", "ckpt_path=x", "input=my file (1).csv", f"hydra.run.dir={tmp_path}", timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zoo: error: ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("zoo: error: input=my file (1).csv: Hydra cannot parse this value")
    assert lines[0].endswith("""'input="my file (1).csv"'"""), lines[0]


def test_export_without_out_goes_to_the_runs_export_folder(byte_run, tmp_path):
    from zoo.export import export

    def run(ckpt_path: Path, *more: str) -> Path:
        cfg = compose_config(
            [f"ckpt_path={ckpt_path}", *more], output_dir=tmp_path / "e", config_name="export"
        )
        return export(cfg)

    assert run(byte_run) == byte_run / "export"  # a run folder
    assert run(byte_run / "checkpoints" / "last.ckpt") == byte_run / "export"  # one of its checkpoints
    assert "No metrics were recorded" not in (byte_run / "export" / "README.md").read_text()
    assert run(byte_run / "export") == byte_run / "export"  # an export folder: re-exported in place
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes((byte_run / "checkpoints" / "last.ckpt").read_bytes())
    assert run(loose) == tmp_path / "e" / "export"  # a loose checkpoint: this command's run folder
    assert run(byte_run, f"out={tmp_path / 'mine'}") == tmp_path / "mine"
    assert not (tmp_path / "e" / "export" / "model.onnx").exists()
