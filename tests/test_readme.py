"""The README runs as typed: every command of README.md's ```bash blocks (and docs/serving.md's, where it
exists) runs in order through ``bash -c`` in a fresh working folder, so a quoting slip or a broken
train -> eval -> export -> predict chain fails the suite.

A command is never edited. It is only

- **shortened**: overrides appended to a zoo command (`SHORTER`: fewer steps, a smaller network, fewer
  samples; Hydra and argparse let the last value of a key win), or
- **skipped** by a rule of `SKIP`, each with its reason (GPU/cluster-only recipes, the install and the test
  suite themselves).

A command ending in `` &`` starts a server: the test waits for ``GET /health`` on the port the command
names, and stops it by its pid at the end. The working folder gets what a README reader has beside the
checkout: ``../shared/data`` (the real logs the recipes read; the test skips where it is absent) and the two
text files the README's ``data.path=`` names; ``$HOME`` is a temporary folder (``~/myconf``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

DOCS = [ROOT / "README.md", ROOT / "docs" / "serving.md"]

SKIP = [  # (pattern, reason): a command matching the pattern is not run
    (
        r"^make install\b",
        "installs packages (network, minutes): this suite already runs in the installed env",
    ),
    (r"^make test\b", "the whole test suite, this test included"),
    (r"trainer=(fsdp|gpu|ddp|multinode)\b|experiment=(gpt_300m|event_gpu)\b", "needs GPUs or a cluster"),
    (
        r"^make docker\b|(^|\s)docker\s",
        "needs a Docker daemon: make test-docker builds the image, trains in it and starts its TensorBoard",
    ),
    (
        r"data=tft/prometheus|source=prometheus",
        "needs a Prometheus server: make test-prometheus runs these against its own",
    ),
]

GPT = {"trainer.max_steps": 4, "trainer.val_check_interval": 4, "trainer.limit_val_batches": 2,
       "data.max_bytes": 400000, "data.max_documents": 3000, "data.batch_size": 8,
       "data.block_size": 32, "model.net.n_layer": 1, "model.net.n_head": 2, "model.net.n_embd": 32}  # fmt: skip
EVENTS = {"trainer.max_steps": 3, "trainer.max_epochs": 1, "trainer.val_check_interval": 3,
          "trainer.limit_val_batches": 2, "++trainer.limit_test_batches": 2}  # fmt: skip
TFT = {"trainer.max_steps": 3, "trainer.max_epochs": 1, "trainer.val_check_interval": 3,
       "trainer.limit_val_batches": 2, "model.net.hidden_size": 8, "model.net.attention_head_size": 1,
       "model.net.hidden_continuous_size": 4}  # fmt: skip
# The collector's samples, 20 per second: a 200 ms step stands in for the README's minute.
TFT_ME = {**TFT, "data.step": "200ms", "data.max_gap": "1s", "data.encoder_length": 6,
          "data.prediction_length": 3, "data.calendar": "[]", "data.season": "2s", "data.batch_size": 8}  # fmt: skip

SHORTER = [  # (pattern, overrides): the first matching pattern's overrides are appended
    (r"zoo\.train.*data=tft/file", TFT_ME),
    (r"zoo\.train.*model=tft", TFT),
    (r"zoo\.train.*(event_predictor|experiment=event)", EVENTS),
    (r"zoo\.train.*hparams_search", {**GPT, "hydra.sweeper.n_trials": 2}),
    (r"zoo\.train.*ckpt_path=", {**GPT, "trainer.max_steps": 6}),  # resume: 2 more steps
    (r"zoo\.train.*experiment=mainrun", {**GPT, "data.vocab_size": 300}),
    (r"(zoo\.train|zoo-train)", GPT),
    (
        r"zoo\.eval",
        {
            "trainer.limit_val_batches": 2,
            "++trainer.limit_test_batches": 2,
            "backtest_cutoffs": 1,
            "backtest_steps": 1,
        },
    ),  # fmt: skip
    (r"zoo\.predict", {"max_new_tokens": 8}),
    (r"zoo\.collect", {"interval": 0.05, "samples": 240, "flush_every": 100}),
    (r"zoo\.monitor", {"interval": 0.05, "duration": 4, "live": "false"}),
]
TEXT_FILES = {"tinyshakespeare.txt": "text/tinyshakespeare.txt", "hacker_news_titles.csv": "text/hacker_news_titles_20k.csv"}  # fmt: skip
TIMEOUT_S = 600


def bash_commands(path: Path) -> list[str]:
    """The commands of a markdown file's ```bash blocks, in order: continuation lines joined, comment-only
    and blank lines dropped, trailing comments cut."""
    commands: list[str] = []
    in_block = False
    pending = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if not in_block:
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        command = strip_comment(line).strip()
        if command:
            commands.append(command)
    return commands


def strip_comment(line: str) -> str:
    """`line` without a trailing ``# comment`` (a ``#`` outside quotes, at the start or after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def plan(command: str) -> tuple[str | None, str]:
    """(the command to run, why) — None with the reason when a SKIP rule matches."""
    for pattern, reason in SKIP:
        if re.search(pattern, command):
            return None, reason
    background = command.endswith("&")
    body = command[:-1].rstrip() if background else command
    for pattern, overrides in SHORTER:
        if re.search(pattern, body):
            extra = " ".join(f"{k} {v}" if k.startswith("--") else f"{k}={v}" for k, v in overrides.items())
            body = f"{body} {extra}"
            break
    return body + (" &" if background else ""), ""


def test_plan_appends_overrides_and_never_edits_a_command():
    assert bash_commands(ROOT / "README.md")  # the README has commands
    cmd = 'python -m zoo.predict ckpt_path=runs/gpt prompt="def main(" max_new_tokens=200'
    ran, _ = plan(cmd)
    assert ran.startswith(cmd + " ") and ran.endswith("max_new_tokens=8")
    assert plan("python -m zoo.train experiment=gpt_300m trainer=fsdp")[0] is None
    assert plan("ZOO_UID=$(id -u) docker compose -f docker/compose.yaml up -d tensorboard")[0] is None
    assert plan("make docker-cuda")[0] is None and plan("mkdir -p logs data")[0] == "mkdir -p logs data"
    assert (
        plan("python -m zoo.serve ckpt_path=runs/gpt port=8000 &")[0]
        == "python -m zoo.serve ckpt_path=runs/gpt port=8000 &"
    )
    assert (
        strip_comment('python -m zoo.predict prompt="a # b" k=5   # next K')
        == 'python -m zoo.predict prompt="a # b" k=5   '
    )


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with status {proc.returncode} before answering /health")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from http://127.0.0.1:{port}/health within {timeout} s")


@pytest.mark.slow
def test_readme_commands_run_as_typed(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    work, home = tmp_path / "checkout", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    for name, source in TEXT_FILES.items():
        (work / name).symlink_to(SHARED_DATA.resolve() / source)
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_ROOT", "ZOO_CONFIG_DIR", "ZOO_CACHE")}
    # `python` and the console scripts of the interpreter running the tests (a virtualenv's, where one is used)
    env |= {"HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1", "ZOO_SHARED_DATA": str(SHARED_DATA)}  # fmt: skip
    commands = [c for doc in DOCS if doc.is_file() for c in bash_commands(doc)]
    servers: list[subprocess.Popen] = []
    report: list[str] = []
    try:
        for command in commands:
            ran, reason = plan(command)
            if ran is None:
                report.append(f"skipped  {command}  ({reason})")
                continue
            start = time.monotonic()
            if ran.endswith("&"):
                port = re.search(r"port=(\d+)", ran)
                assert port, f"a background command names no port=: {command}"
                proc = subprocess.Popen(["bash", "-c", "exec " + ran[:-1]], cwd=work, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
                servers.append(proc)
                wait_healthy(int(port.group(1)), proc)
            else:
                proc = subprocess.run(["bash", "-c", ran], cwd=work, env=env, capture_output=True, text=True,
                                      timeout=TIMEOUT_S)  # fmt: skip
                assert proc.returncode == 0, (
                    f"README command failed (exit {proc.returncode}):\n  {command}\nran as:\n  {ran}\n"
                    f"{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
                )
            report.append(f"{time.monotonic() - start:6.1f} s  {command}")
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print("\n".join(report))
    # The chains the README promises left their files where it says.
    assert (work / "runs" / "gpt" / "export" / "model.onnx").is_file()
    assert (work / "continuations.txt").read_text().strip()
    assert (work / "runs" / "me" / "export" / "model.onnx").is_file()
