"""The zoo as a product: a non-editable wheel install that works from any directory (user config folders
included), the README's commands in their short versions running clean (no warning floods, each log
line once, no advertisements, a sane epoch count), short runs that still report their monitored metric,
and tracebacks one switch away for a maintainer."""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA, run_cli

WARNING = re.compile(r"warn", re.IGNORECASE)
MAX_WARNING_LINES = 3


def check_clean(proc: subprocess.CompletedProcess, run_dir: Path) -> dict:
    """The run exited 0, wrote metrics.json with its monitored metric, and printed clean output."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if WARNING.search(line)]
    assert len(warnings) <= MAX_WARNING_LINES, "\n".join(warnings[:20])
    assert "litlogger" not in out
    assert "/-2" not in out and "/-1 " not in out, "progress bar epoch count"
    assert out.count("`Trainer.fit` stopped") <= 1, "a Lightning line printed twice"
    assert out.count("Seed set to") <= 1, "a Lightning line printed twice"
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert payload["monitor"] in payload["metrics"], payload
    return payload


README_SHORT = {
    "gpt": ["trainer.max_steps=12", "data.max_bytes=200000"],
    "events": [
        "model=event_predictor",
        "experiment=event_cpu_baseline",
        "trainer.max_steps=12",
        "trainer.limit_val_batches=4",
    ],  # fmt: skip
    "tft": ["model=tft", "trainer=cpu", "trainer.max_steps=8", "trainer.limit_val_batches=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(README_SHORT))
def test_readme_command_short_version_runs_clean_and_reports_its_metric(family, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("zoo.train", *README_SHORT[family], f"paths.cache_dir={tmp_path / 'cache'}",
                   f"hydra.run.dir={run_dir}", timeout=900)  # fmt: skip
    payload = check_clean(proc, run_dir)
    assert "no validation ran before the step limit" in proc.stdout  # the step limit came first
    assert payload["global_step"] == int(README_SHORT[family][-2 if family != "gpt" else 0].split("=")[1])
    assert (run_dir / "export" / "zoo.json").is_file() and (run_dir / "export" / "README.md").is_file()


@pytest.mark.slow
def test_ett_recipe_short_version_runs_clean(tmp_path):
    if not (SHARED_DATA / "metrics").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    run_dir = tmp_path / "run"
    # Every 24th evaluation window: the full validation and test splits (19,495 windows each) would be
    # predicted for the calibration, the test and the figures, most of this test's time.
    proc = run_cli("zoo.train", "experiment=tft_etth1", "trainer=cpu", "trainer.max_steps=6",
                   "trainer.limit_val_batches=3", "data.eval_stride=24", f"paths.cache_dir={tmp_path / 'cache'}",
                   f"hydra.run.dir={run_dir}", timeout=900)  # fmt: skip
    check_clean(proc, run_dir)


def test_a_bug_in_a_constructor_keeps_its_traceback_but_a_config_mistake_is_one_line(tmp_path):
    from zoo.core.errors import ZooError
    from zoo.core.run import _instantiate

    with pytest.raises(ZooError, match=r"^model: .*unexpected keyword argument 'nope'"):
        _instantiate({"_target_": "zoo.core.datamodule.ResumableSampler", "nope": 1}, "model")
    # A zoo constructor that fails inside its own code: the original exception, not a one-liner.
    with pytest.raises(ValueError) as info:
        _instantiate({"_target_": "zoo.core.callbacks.Throughput", "log_every_n_steps": "abc"}, "callbacks")
    assert not isinstance(info.value, ZooError)


def test_zoo_debug_shows_the_traceback_of_a_user_error(tmp_path):
    args = ["ckpt_path=/no/such.ckpt", f"hydra.run.dir={tmp_path / 'e'}"]
    quiet = run_cli("zoo.eval", *args, timeout=120)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("zoo: error: ckpt_path=/no/such.ckpt")
    loud = run_cli("zoo.eval", *args, timeout=120, env={"ZOO_DEBUG": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ZooError" in loud.stderr


def test_user_config_folder_adds_an_experiment(tmp_path):
    """ZOO_CONFIG_DIR adds a user's config folder: its experiment composes and is known to the CLI guard."""
    from zoo.core.config import compose_config

    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_tiny.yaml").write_text("# @package _global_\nmodel:\n  net:\n    n_layer: 1\n")
    old = os.environ.get("ZOO_CONFIG_DIR")
    os.environ["ZOO_CONFIG_DIR"] = str(tmp_path / "myconf")
    try:
        cfg = compose_config(["experiment=my_tiny"], output_dir=tmp_path / "run")
        assert cfg.model.net.n_layer == 1
    finally:
        if old is None:
            os.environ.pop("ZOO_CONFIG_DIR")
        else:
            os.environ["ZOO_CONFIG_DIR"] = old
    from zoo.core.errors import ZooError

    with pytest.raises(ZooError, match="unknown experiment=my_tiny"):
        compose_config(["experiment=my_tiny"], output_dir=tmp_path / "run")


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_trains_from_any_directory(tmp_path):
    """Build the wheel, install it (not editable) into a fresh virtualenv, and train from an unrelated
    directory with the installed console script; a user config folder is picked up through the
    hydra.searchpath override."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)  # fmt: skip
    wheel = next(wheels.glob("zoo-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_CONFIG_DIR")}
    # Without PYTHONPATH: a checkout on it (src/zoo.egg-info) would count as zoo already installed.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=clean_env)  # fmt: skip
    # Then torch & co. come from the environment running this test, a virtualenv or the system interpreter
    # alike (`system_site_packages=True` would see the base interpreter, not a virtualenv holding them): its
    # site-packages join the new venv's path after the venv's own, which holds the wheel's zoo (written after
    # the install, so pip does not take the checkout's zoo for installed). Listed in a .pth as plain folders,
    # their own .pth files (an editable zoo of the checkout) are not run.
    venv_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(venv_site) / "zoo_test_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import zoo, zoo.core.cli as c; print(zoo.__file__); print(c.CONFIG_DIR)"],
                           cwd=elsewhere, capture_output=True, text=True, env=clean_env, check=True)  # fmt: skip
    module_file, config_dir = where.stdout.split()
    assert str(env_dir) in module_file and str(ROOT) not in module_file, where.stdout
    assert (Path(config_dir) / "model" / "tft.yaml").is_file()
    mine = tmp_path / "myconf" / "experiment"
    mine.mkdir(parents=True)
    (mine / "tiny.yaml").write_text("# @package _global_\nmodel:\n  net:\n    n_layer: 1\n    n_embd: 32\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(env_dir / "bin" / "zoo-train"), "experiment=tiny", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
         "trainer.max_steps=4", "data.max_bytes=400000", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={run_dir}"],
        cwd=elsewhere, capture_output=True, text=True, env=clean_env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert payload["global_step"] == 4 and payload["monitor"] in payload["metrics"]
    assert "n_layer: 1" in (run_dir / ".hydra" / "config.yaml").read_text()
    unknown = subprocess.run([str(py), "-m", "zoo.train", "model=tfx"], cwd=elsewhere, capture_output=True,
                             text=True, env=clean_env, timeout=120)  # fmt: skip
    assert unknown.returncode == 2 and "expected one of" in unknown.stderr and "tft" in unknown.stderr
