"""Loading a model runs no code named inside it: a checkpoint or export folder whose stored config names
`builtins.open` (or any class outside the zoo, a registered family and the short allowlist) is refused in one
line naming the key by every command that loads one, before anything is instantiated (zoo.core.trust)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli
from zoo.core.config import compose_config
from zoo.core.errors import ZooError
from zoo.core.family import load_run, registry
from zoo.core.trust import LIBRARY_TARGETS, TRUST_ENV, check_stored_config, trusted_packages

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
TINY = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
        "model.net.n_head=2", "data.block_size=16", "data.batch_size=4"]  # fmt: skip
PRECIOUS = "precious data\n"
PACKAGES = trusted_packages(registry())  # zoo and the registered families' packages


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A GPT trained for 2 steps, with its export folder (about 5 s)."""
    from zoo.train import train

    root = tmp_path_factory.mktemp("trust")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([*QUIET, *TINY, "trainer.max_steps=2", "trainer.val_check_interval=2",
                              "trainer.limit_val_batches=1", f"paths.cache_dir={cache_dir}"],
                             output_dir=root / "run"))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert (root / "run" / "export" / "zoo.json").is_file()
    return root / "run"


def opener(victim: Path) -> dict:
    """The attack of issue 28: instantiating this node opens `victim` for writing, truncating it."""
    return {"_target_": "builtins.open", "_args_": [str(victim), "w"]}


def craft(run: Path, out: Path, edit) -> tuple[Path, Path]:
    """A copy of `run`'s last checkpoint and of its export folder whose stored configs went through `edit`."""
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    config = yaml.safe_load(checkpoint["zoo_config"])
    edit(config)
    checkpoint["zoo_config"] = yaml.safe_dump(config)
    torch.save(checkpoint, out / "shared.ckpt")
    export = out / "export"
    shutil.copytree(run / "export", export)
    marker = json.loads((export / "zoo.json").read_text())
    edit(marker["config"])
    (export / "zoo.json").write_text(json.dumps(marker))
    return out / "shared.ckpt", export


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(PRECIOUS)
    return path


def test_the_attack_is_refused_for_checkpoints_and_export_folders_before_anything_runs(
    trained, tmp_path, victim
):
    ckpt, export = craft(trained, tmp_path / "evil", lambda c: c["data"].__setitem__("seed", opener(victim)))
    for path in (ckpt, export, export.parent):  # a .ckpt, an export folder, a folder holding export/
        if path == export.parent:
            (export.parent / "shared.ckpt").unlink()
        with pytest.raises(ZooError, match=r"data\.seed\._target_=builtins\.open: refused") as err:
            load_run(path)
        assert "\n" not in str(err.value) and f"ckpt_path={path if path != export.parent else export}" in str(
            err.value
        )
    assert victim.read_text() == PRECIOUS
    run = load_run(trained)  # the run it was crafted from loads as before
    assert run.family == "gpt" and run.config.data.seed == 1337


@pytest.mark.parametrize(
    "node, key",
    [
        (
            {"a": [1, {"b": {"_target_": "builtins.open"}}]},
            r"a\[1\]\.b\._target_=builtins\.open",
        ),  # in a list
        ({"x": {"_target_": "builtins.open", "_partial_": True}}, r"x\._target_=builtins\.open"),
        ({"x": {"_target_": "os.system", "_args_": ["true"]}}, r"x\._target_=os\.system"),
        ({"x": {"_target_": "zoo.core.run.os.system"}}, r"zoo\.core\.run\.os\.system: refused: not a class"),
        ({"x": {"_target_": "zoo.core.run.Path"}}, r"zoo\.core\.run\.Path: refused: a class of pathlib"),
        (
            {"x": {"_target_": "zoo.core.run.write_json"}},
            r"write_json: refused: not a class",
        ),  # a zoo function
        ({"x": {"_target_": "zoo.nothing.Here"}}, r"zoo\.nothing\.Here: refused: cannot be imported"),
        ({"x": {"_target_": ["builtins.open"]}}, r"x\._target_=\['builtins.open'\]: refused"),
        (
            {"x": {"_args_": [{"_target_": "subprocess.Popen", "_args_": ["ls"]}]}},
            r"x\._args_\[0\]\._target_",
        ),
        ({"data": {"seed": "${oc.decode:'{_target_: builtins.open}'}"}}, r"data\.seed=.*interpolation"),
        ({"x": "${oc.env:HOME}"}, r"x=\$\{oc\.env:HOME\}: refused: a stored config holds an interpolation"),
    ],
)
def test_untrusted_nodes_are_refused_naming_the_key(node, key):
    with pytest.raises(ZooError, match=key) as err:
        check_stored_config(node, "ckpt_path=x.ckpt", PACKAGES)
    assert str(err.value).startswith("ckpt_path=x.ckpt: ")


def test_a_module_outside_the_trusted_packages_is_never_imported(tmp_path, monkeypatch):
    """Importing a module runs its code: an untrusted name is refused by its text, before any import."""
    (tmp_path / "evil_module_zoo_test.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w')\nclass C: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ZooError, match="evil_module_zoo_test.C: refused"):
        check_stored_config({"m": {"_target_": "evil_module_zoo_test.C"}}, "ckpt_path=x", PACKAGES)
    assert not (tmp_path / "ran").exists() and "evil_module_zoo_test" not in sys.modules


def test_zoo_and_family_classes_the_allowlist_and_the_users_own_list_are_accepted(monkeypatch):
    check_stored_config({"model": {"_target_": "zoo.gpt.GPTModule", "optim": {"lr": 1e-3}},
                         "data": {"_target_": "zoo.tft.datamodule.MetricsDataModule"},
                         "callbacks": {"c": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint"}},
                         "trainer": {"strategy": {"_target_": "zoo.core.strategies.fsdp"}}}, "x", PACKAGES)  # fmt: skip
    swa = {"swa": {"_target_": "lightning.pytorch.callbacks.StochasticWeightAveraging"}}
    with pytest.raises(ZooError, match="StochasticWeightAveraging: refused"):
        check_stored_config(swa, "x", PACKAGES)
    monkeypatch.setenv(TRUST_ENV, "lightning.pytorch.callbacks.StochasticWeightAveraging, x.Y")
    check_stored_config(swa, "x", PACKAGES)


def test_every_target_of_the_zoos_own_configs_is_trusted():
    """The allowlist tracks conf/: a run of any shipped config loads. `hydra:` sections are never stored."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_":
                    found.add(v)
                elif k != "hydra":
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in (ROOT / "conf").rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    assert len(found) >= 10
    for target in sorted(found):
        check_stored_config({"node": {"_target_": target}}, str(path), PACKAGES)
    assert LIBRARY_TARGETS <= found | {"lightning.pytorch.callbacks.EarlyStopping"}, LIBRARY_TARGETS - found


def test_lightning_instantiator_in_hyper_parameters_is_refused(trained, tmp_path):
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(checkpoint, tmp_path / "x.ckpt")
    with pytest.raises(
        ZooError, match=r"hyper_parameters\._instantiator=lightning.pytorch.cli.instantiate_module"
    ):
        load_run(tmp_path / "x.ckpt")
    del checkpoint["hyper_parameters"]["_instantiator"]
    checkpoint["hyper_parameters"]["optim"] = {"x": {"_target_": "builtins.exec", "_args_": ["1"]}}
    torch.save(checkpoint, tmp_path / "y.ckpt")
    with pytest.raises(ZooError, match=r"optim\.x\._target_=builtins\.exec: refused"):
        load_run(tmp_path / "y.ckpt")


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zoo: error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMMANDS = {  # command -> its arguments besides the model
    "zoo.eval": [],
    "zoo.predict": ["prompt=abc", "max_new_tokens=2"],
    "zoo.export": ["format=onnx"],
    "zoo.monitor": ["duration=5"],
    "zoo.serve": ["host=127.0.0.1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_the_crafted_checkpoint_and_export_folder(command, trained, tmp_path, victim):
    if command == "zoo.serve" and importlib.util.find_spec("zoo.serve") is None:
        pytest.skip("zoo.serve is not on this branch")
    ckpt, export = craft(trained, tmp_path / "evil", lambda c: c["data"].__setitem__("seed", opener(victim)))
    extra = COMMANDS[command] + ([f"port={free_port()}"] if command == "zoo.serve" else [])
    for path in (ckpt, export) if command != "zoo.monitor" else (export,):  # monitor: load_run as the rest
        key = "export" if command == "zoo.monitor" else "ckpt_path"
        proc = run_cli(command, f"{key}={path}", *extra, f"paths.cache_dir={tmp_path / 'cache'}",
                       f"hydra.run.dir={tmp_path / 'out'}", timeout=120)  # fmt: skip
        assert f"{key}={path}: data.seed._target_=builtins.open: refused" in one_line(proc)
        assert victim.read_text() == PRECIOUS
    assert not (export / "model.onnx").exists()  # zoo.export wrote nothing


@pytest.mark.slow
def test_train_resume_refuses_the_crafted_checkpoint(trained, tmp_path, victim, cache_dir):
    ckpt, _ = craft(trained, tmp_path / "evil", lambda c: c["data"].__setitem__("seed", opener(victim)))
    proc = run_cli("zoo.train", *QUIET, *TINY, "trainer.max_steps=3", f"ckpt_path={ckpt}",
                   f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'out'}", timeout=180)  # fmt: skip
    assert f"ckpt_path={ckpt}: data.seed._target_=builtins.open: refused" in one_line(proc)
    assert victim.read_text() == PRECIOUS
