"""The bad-input matrix (docs/bad-inputs.md): every case builds one bad input, runs the code path the CLI
runs, and checks that the user gets one line naming the file/column/key and what was expected, and that
nothing already on disk (checkpoints, metrics, collected samples, prepared caches) changed.

Most cases call the entry points' own functions in-process (fast); the `cli(...)` cases start the real
command, to prove the user sees exactly one `zoo: error: ...` line and exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import run_cli
from zoo.core.config import compose_config
from zoo.core.errors import ZooError

QUIET = ["~callbacks.rich_progress_bar", "~callbacks.throughput", "~callbacks.lr_monitor", "logger=none",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]  # fmt: skip
TINY_GPT = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
            "model.net.n_head=2", "data.block_size=16", "data.batch_size=4"]  # fmt: skip
EVENT_MAPPING = ["data.columns.case_id=Case", "data.columns.timestamp=When", "data.columns.activity=Task",
                 "data.columns.resource=Who"]  # fmt: skip
TFT_COLUMNS = {"timestamp": "ts", "series": "machine", "cpu_percent": "cpu", "memory_percent": "mem"}


# -- inputs -------------------------------------------------------------------------------------------------
def event_log(n_cases: int = 40) -> pd.DataFrame:
    rows = []
    for c in range(n_cases):
        start = pd.Timestamp("2024-01-01T09:00:00Z") + pd.Timedelta(hours=7 * c)
        for i, act in enumerate([["Open", "Fix", "Close"], ["Open", "Reject"]][c % 2]):
            when = (start + pd.Timedelta(hours=5 * i)).isoformat()
            rows.append({"Case": f"C{c}", "Task": act, "When": when, "Who": f"u{c % 3}"})
    return pd.DataFrame(rows)


def metrics_table(n: int = 60, hosts: tuple[str, ...] = ("a", "b")) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "ts": pd.date_range("2024-01-01", periods=n, freq="5min"),
                    "machine": h,
                    "cpu": np.linspace(1, 50, n),
                    "mem": 40.0 + np.sin(np.arange(n)),
                }
            )
            for h in hosts
        ],
        ignore_index=True,
    )


def write_csv(path: Path, frame: pd.DataFrame | None) -> Path:
    if frame is None:
        path.write_text("")
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """A tiny GPT run and a tiny event-predictor run (checkpoints, metrics.json, vocab.json): what a bad
    input must never touch. About 10 s together."""
    from zoo.train import train

    root = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gpt = [*QUIET, *TINY_GPT, "trainer.max_steps=2", "trainer.val_check_interval=2",
               "trainer.limit_val_batches=1", "export=false", f"paths.cache_dir={cache_dir}"]  # fmt: skip
        train(compose_config(gpt, output_dir=root / "gpt"))
        log = write_csv(root / "log.csv", event_log())
        events = [*QUIET, "model=event_predictor", "experiment=event_cpu_baseline", "data=events/file",
                  f"data.path={log}", *EVENT_MAPPING, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                  "trainer.limit_val_batches=1", "export=false", f"paths.cache_dir={cache_dir}"]  # fmt: skip
        train(compose_config(events, output_dir=root / "events"))
    finally:
        torch.set_num_threads(threads)
    return {
        "gpt_run": root / "gpt",
        "gpt_ckpt": root / "gpt" / "checkpoints" / "last.ckpt",
        "events_run": root / "events",
        "events_ckpt": root / "events" / "checkpoints" / "last.ckpt",
        "log": log,
    }


# -- how a case fails -------------------------------------------------------------------------------------
def raises(fn: Callable[[], object]) -> str:
    with pytest.raises(ZooError) as err:
        fn()
    return str(err.value)


def cli(module: str, *args: str) -> str:
    """The real command: exit status 2, exactly one `zoo: error:` line, no traceback; returns the message."""
    proc = run_cli(module, *args, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zoo: error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0].removeprefix("zoo: error: ")


def train_with(out: Path, cache: Path, *overrides: str) -> Callable[[], object]:
    from zoo.train import train

    return lambda: train(compose_config([*QUIET, f"paths.cache_dir={cache}", *overrides], output_dir=out))


def entry(name: str, out: Path, cache: Path, *overrides: str) -> Callable[[], object]:
    """`python -m zoo.<name> *overrides` in-process (eval, generate, predict)."""
    import importlib

    fn = {"eval": "evaluate", "generate": "generate", "predict": "predict"}[name]
    task = getattr(importlib.import_module(f"zoo.{name}"), fn)
    return lambda: task(
        compose_config([f"paths.cache_dir={cache}", *overrides], output_dir=out, config_name=name)
    )


def tft_data(
    tmp: Path, frame: pd.DataFrame | str | Path | None, name: str = "m.csv", **kwargs
) -> Callable[[], object]:
    """The TFT file loader (what data=tft/file instantiates) up to its first batch; `frame` is the table,
    the file's text, None for an empty file, or a Path to leave the file missing."""
    from zoo.tft.datamodule import MetricsDataModule

    path = tmp / name
    if isinstance(frame, str):
        path.write_text(frame)
    elif not isinstance(frame, Path):
        write_csv(path, frame)
    settings = dict(source="file", path=str(path), columns=TFT_COLUMNS, targets=["cpu_percent", "memory_percent"],
                    static_categoricals=[], step="5min", max_gap="10min", encoder_length=12, prediction_length=4,
                    cache_dir=str(tmp / "cache"), num_workers=0, batch_size=4) | kwargs  # fmt: skip

    def run() -> None:
        dm = MetricsDataModule(**settings)
        dm.prepare_data()
        dm.setup()
        dm.train_dataloader()

    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".hydra"))
    return dst


# -- the matrix ---------------------------------------------------------------------------------------------
# name -> builder(tmp_path, trained, cache_dir) -> (attempt returning the message, paths that must not change),
# and the pattern the message must match (the file/column/key and what was expected).
Case = Callable[[Path, dict, Path], tuple[Callable[[], str], list[Path]]]
CASES: dict[str, tuple[Case, str]] = {}


def case(name: str, pattern: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = (fn, pattern)
        return fn

    return register


# shared: config names, precision, lengths, checkpoints


@case("unknown-model-cli", r"^unknown model=gtp: expected one of .*\bgpt\b.*\(conf/model/\)$")
def _(tmp, t, cache):
    return lambda: cli("zoo.train", "model=gtp", f"hydra.run.dir={tmp / 'run'}"), []


@case("unknown-data", r"^unknown data=tft/nope: expected one of .*\btft/synthetic\b.*\(conf/data/\)$")
def _(tmp, t, cache):
    return lambda: raises(train_with(tmp / "run", cache, "data=tft/nope")), []


@case(
    "family-mismatch",
    r"model=tft \(family 'tft'\) cannot train on data=gpt/synthetic \(family 'gpt'\): pick a data=tft/",
)
def _(tmp, t, cache):
    run = copy_run(t["gpt_run"], tmp / "run")
    return lambda: raises(train_with(run, cache, "model=tft", "data=gpt/synthetic")), [run]


@case(
    "fp16-on-cpu",
    r"trainer.precision=16-mixed is not supported on CPU.*use trainer.precision=bf16-mixed or 32-true",
)
def _(tmp, t, cache):
    run = copy_run(t["gpt_run"], tmp / "run")
    attempt = train_with(run, cache, *TINY_GPT, "trainer=cpu", "trainer.precision=16-mixed")
    return lambda: raises(attempt), [run]


@case("gpu-without-cuda", r"trainer.accelerator=gpu needs a CUDA GPU and none is visible: use trainer=cpu")
def _(tmp, t, cache):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    return lambda: raises(train_with(tmp / "run", cache, *TINY_GPT, "trainer=gpu")), []


@case("zero-max-steps", r"^trainer.max_steps=0 must be a positive integer \(or -1 for no limit\)$")
def _(tmp, t, cache):
    run = copy_run(t["gpt_run"], tmp / "run")
    return lambda: raises(train_with(run, cache, *TINY_GPT, "trainer.max_steps=0")), [run]


@case("negative-block-size", r"^data.block_size=-8 must be a positive integer$")
def _(tmp, t, cache):
    return lambda: raises(train_with(tmp / "run", cache, *TINY_GPT, "data.block_size=-8")), []


@case(
    "eval-family-mismatch",
    r"ckpt_path=.*last.ckpt holds a gpt model, which cannot be evaluated on data=tft/synthetic \(family 'tft'\): pick a data=gpt/",
)
def _(tmp, t, cache):
    attempt = entry("eval", tmp / "eval", cache, f"ckpt_path={t['gpt_ckpt']}", "data=tft/synthetic")
    return lambda: raises(attempt), [t["gpt_run"]]


@case(
    "corrupt-checkpoint",
    r"ckpt_path=.*truncated.ckpt: not a readable checkpoint \(.+\): expected a complete .ckpt written by zoo.train",
)
def _(tmp, t, cache):
    bad = tmp / "run" / "checkpoints" / "truncated.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(t["gpt_ckpt"].read_bytes()[:2000])  # a copy cut short, as by a full disk
    return lambda: raises(entry("eval", tmp / "eval", cache, f"ckpt_path={bad}")), [bad.parent]


@case(
    "missing-checkpoint-cli",
    r"^ckpt_path=.*nope.ckpt: no such file or folder \(expected a .ckpt, a run folder or an export folder\)$",
)
def _(tmp, t, cache):
    return lambda: cli("zoo.generate", f"ckpt_path={tmp / 'nope.ckpt'}", f"hydra.run.dir={tmp / 'gen'}"), []


# gpt


@case("gpt-missing-file", r"^data.path=.*no_corpus.txt: no such file$")
def _(tmp, t, cache):
    attempt = train_with(tmp / "run", cache, "data=gpt/text_file", f"data.path={tmp / 'no_corpus.txt'}")
    return lambda: raises(attempt), []


@case("gpt-empty-corpus", r"^data.path=.*empty.txt: the file is empty \(no text to train on\)$")
def _(tmp, t, cache):
    (tmp / "empty.txt").write_text("\n \n")
    attempt = train_with(tmp / "run", cache, "data=gpt/text_file", f"data.path={tmp / 'empty.txt'}")
    return lambda: raises(attempt), []


@case(
    "gpt-renamed-column",
    r"^data.path=.*titles.csv: no column 'title' \(data.column\): expected one of id, headline$",
)
def _(tmp, t, cache):
    pd.DataFrame({"id": [1, 2, 3], "headline": ["a b", "c d", "e f"]}).to_csv(tmp / "titles.csv", index=False)
    attempt = train_with(
        tmp / "run", cache, "data=gpt/text_file", f"data.path={tmp / 'titles.csv'}", "data.column=title"
    )
    return lambda: raises(attempt), []


@case(
    "gpt-corpus-shorter-than-window",
    r"data \(text_file\): 9 training tokens are fewer than data.block_size\+1=65: lower data.block_size",
)
def _(tmp, t, cache):
    (tmp / "short.txt").write_text("hello world")
    attempt = train_with(
        tmp / "run", cache, "data=gpt/text_file", f"data.path={tmp / 'short.txt'}", "data.block_size=64"
    )
    return lambda: raises(attempt), []


@case(
    "gpt-batch-larger-than-data",
    r"^data.batch_size=4096 \(x1 devices\) is larger than the training set \(\d+ samples\): lower data.batch_size",
)
def _(tmp, t, cache):
    run = copy_run(t["gpt_run"], tmp / "run")
    return lambda: raises(train_with(run, cache, *TINY_GPT, "data.batch_size=4096")), [run, cache / "gpt"]


@case(
    "gpt-tokenizer-mismatch",
    r"^data=gpt/text_file: its tokenizer \(byte, vocabulary 257\) does not match the checkpoint's \(char, vocabulary 16\): expected data tokenized as in training",
)
def _(tmp, t, cache):
    (tmp / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog " * 40)
    attempt = entry("eval", tmp / "eval", cache, f"ckpt_path={t['gpt_ckpt']}", "data=gpt/text_file",
                    f"data.path={tmp / 'corpus.txt'}", "data.block_size=16")  # fmt: skip
    return lambda: raises(attempt), [t["gpt_run"]]


@case(
    "gpt-unknown-prompt-character",
    r"^prompt='XYZ': character 'X' is not in the character vocabulary of this model \(expected one of the 16 characters 'abcdefghijklmnop'\)$",
)
def _(tmp, t, cache):
    attempt = entry(
        "generate", tmp / "gen", cache, f"ckpt_path={t['gpt_ckpt']}", "prompt=XYZ", "max_new_tokens=3"
    )
    return lambda: raises(attempt), [t["gpt_run"]]


@case(
    "generate-events-checkpoint",
    r"ckpt_path=.*last.ckpt: a model of the events family \(zoo.events.module.EventModule\); zoo.generate samples "
    r"GPT models only \(python -m zoo.predict takes every family\)$",
)
def _(tmp, t, cache):
    attempt = entry("generate", tmp / "gen", cache, f"ckpt_path={t['events_ckpt']}", "max_new_tokens=3")
    return lambda: raises(attempt), [t["events_run"]]


@case("generate-zero-tokens", r"^max_new_tokens=0 must be a positive integer$")
def _(tmp, t, cache):
    attempt = entry("generate", tmp / "gen", cache, f"ckpt_path={t['gpt_ckpt']}", "max_new_tokens=0")
    return lambda: raises(attempt), [t["gpt_run"]]


# events


def event_train(tmp: Path, cache: Path, frame: pd.DataFrame | None, *overrides: str, run: Path | None = None):
    log = write_csv(tmp / "elog.csv", frame)
    return train_with(run or tmp / "run", cache, "model=event_predictor", "experiment=event_cpu_baseline",
                      "data=events/file", f"data.path={log}", *EVENT_MAPPING, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", *overrides)  # fmt: skip


@case(
    "events-empty-file",
    r"^data.path=.*elog.csv: the event log is empty \(expected a header row and events\)$",
)
def _(tmp, t, cache):
    return lambda: raises(event_train(tmp, cache, None)), []


@case(
    "events-renamed-column",
    r"data.path=.*elog.csv: column 'Who' \(mapped by data.columns.resource\) not found; the log has columns \['Case', 'Task', 'When', 'Resource'\]",
)
def _(tmp, t, cache):
    return lambda: raises(event_train(tmp, cache, event_log().rename(columns={"Who": "Resource"}))), []


@case(
    "events-bad-timestamp",
    r"data.path=.*elog.csv: 1 timestamps in column 'When' cannot be parsed \(first at row 3: 'yesterday'\): expected dates",
)
def _(tmp, t, cache):
    log = event_log()
    log.loc[3, "When"] = "yesterday"
    return lambda: raises(event_train(tmp, cache, log)), []


@case(
    "events-nan-target",
    r"data.path=.*elog.csv: 1 events have no value in column 'Task' \(data.columns.activity, the target field Activity; first at row 4\): expected a value for every event",
)
def _(tmp, t, cache):
    log = event_log()
    log.loc[4, "Task"] = None
    return lambda: raises(event_train(tmp, cache, log)), []


@case(
    "events-unknown-split-value", r"^data.split_column=split: values \['validation'\] are not train/val/test$"
)
def _(tmp, t, cache):
    log = event_log()
    log["split"] = np.where(log["Case"].str[1:].astype(int) % 5 == 0, "validation", "train")
    return lambda: raises(event_train(tmp, cache, log, "data.split=column")), []


@case("events-zero-window", r"^data.src_seq_len=0 must be a positive integer$")
def _(tmp, t, cache):
    return lambda: raises(event_train(tmp, cache, event_log(), "data.src_seq_len=0")), []


@case(
    "events-batch-larger-than-data",
    r"^data.batch_size=100000 \(x1 devices\) is larger than the training set \(\d+ samples\)",
)
def _(tmp, t, cache):
    run = copy_run(t["events_run"], tmp / "run")
    # The same log as the run's: its vocab.json beside the checkpoints must come out byte-identical.
    attempt = event_train(tmp, cache, pd.read_csv(t["log"]), "data.batch_size=100000", run=run)
    return lambda: raises(attempt), [run]


@case("predict-missing-input", r"^input=.*history.csv: no such file$")
def _(tmp, t, cache):
    attempt = entry(
        "predict", tmp / "pred", cache, f"ckpt_path={t['events_ckpt']}", f"input={tmp / 'history.csv'}"
    )
    return lambda: raises(attempt), [t["events_run"]]


@case(
    "predict-renamed-column",
    r"^input=.*history.csv: column 'Who' \(mapped by data.columns.resource\) not found",
)
def _(tmp, t, cache):
    write_csv(tmp / "history.csv", event_log(4).rename(columns={"Who": "Owner"}))
    attempt = entry(
        "predict", tmp / "pred", cache, f"ckpt_path={t['events_ckpt']}", f"input={tmp / 'history.csv'}"
    )
    return lambda: raises(attempt), [t["events_run"]]


@case(
    "predict-vocab-mismatch",
    r"^vocab=.*other_vocab.json: the vocabulary does not match the checkpoint .*use the vocab.json saved with this checkpoint$",
)
def _(tmp, t, cache):
    vocab = json.loads((t["events_run"] / "checkpoints" / "vocab.json").read_text())
    vocab["Activity"].append("Escalate")
    (tmp / "other_vocab.json").write_text(json.dumps(vocab))
    write_csv(tmp / "history.csv", event_log(4))
    attempt = entry("predict", tmp / "pred", cache, f"ckpt_path={t['events_ckpt']}", f"input={tmp / 'history.csv'}",
                    f"vocab={tmp / 'other_vocab.json'}")  # fmt: skip
    return lambda: raises(attempt), [t["events_run"]]


@case(
    "predict-gpt-without-prompt",
    r"^prompt= or input= is required: prompt=\"...\" for one prompt, input=prompts.txt for one per line$",
)
def _(tmp, t, cache):
    attempt = entry("predict", tmp / "pred", cache, f"ckpt_path={t['gpt_ckpt']}")
    return lambda: raises(attempt), [t["gpt_run"]]


@case(
    "predict-gpt-event-log-as-prompts",
    r"^input=.*log.csv line 1: character 'C' is not in the character vocabulary of this model",
)
def _(tmp, t, cache):
    attempt = entry("predict", tmp / "pred", cache, f"ckpt_path={t['gpt_ckpt']}", f"input={t['log']}")
    return lambda: raises(attempt), [t["gpt_run"]]


@case("predict-zero-k-cli", r"^k=0 must be a positive integer$")
def _(tmp, t, cache):
    return lambda: cli("zoo.predict", f"ckpt_path={t['events_ckpt']}", f"input={t['log']}", "k=0",
                       f"hydra.run.dir={tmp / 'pred'}"), [t["events_run"]]  # fmt: skip


# tft


@case("tft-missing-file", r"^data.path=.*m.csv: no such file$")
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, tmp / "m.csv")), []


@case(
    "tft-empty-file",
    r"^data.path=.*m.csv: the file is empty \(expected a table with a header row and samples\)$",
)
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, None)), []


@case(
    "tft-header-only",
    r"data \(metrics, .*m.csv\): the table has no rows \(expected samples with a timestamp and the targets\)$",
)
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, "ts,machine,cpu,mem\n")), []


@case(
    "tft-renamed-column",
    r"m.csv: column 'mem' \(data.columns.memory_percent\) not found; available columns: ts, machine, cpu, memory$",
)
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, metrics_table().rename(columns={"mem": "memory"}))), []


@case(
    "tft-non-numeric-target",
    r"m.csv\): target/covariate column 'cpu_percent' is not numeric \(e.g. value 'high' in row 7\): expected numbers$",
)
def _(tmp, t, cache):
    table = metrics_table().astype({"cpu": object})
    table.loc[7, "cpu"] = "high"
    return lambda: raises(tft_data(tmp, table)), []


@case(
    "tft-nan-target",
    r"m.csv\): target column 'memory_percent' has no values \(all 120 rows are NaN\): expected numbers$",
)
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, metrics_table().assign(mem=np.nan))), []


@case(
    "tft-bad-timestamps",
    r"m.csv: 1 values of column 'ts' \(data.columns.timestamp\) are neither numbers nor dates \(first at row 5: 'soon'\): expected dates",
)
def _(tmp, t, cache):
    table = metrics_table().astype({"ts": str})
    table.loc[5, "ts"] = "soon"
    return lambda: raises(tft_data(tmp, table)), []


@case(
    "tft-duplicated-timestamps",
    r"m.csv\): duplicated timestamp 2024-01-01 00:15:00 in series 'a' \(2 rows with a repeated timestamp in that series\): set data.duplicates=mean",
)
def _(tmp, t, cache):
    table = metrics_table()
    return lambda: raises(tft_data(tmp, pd.concat([table, table.iloc[[3]]], ignore_index=True))), []


@case(
    "tft-series-too-short",
    r"m.csv\): series 'tiny' has no stretch of 16 steps \(encoder_length\+prediction_length\) without gaps \(10 raw rows\)",
)
def _(tmp, t, cache):
    # A prepared cache that the failing run must leave alone.
    tft_data(tmp, metrics_table(), name="good.csv")()
    short = pd.concat([metrics_table(hosts=("a",)), metrics_table(n=10, hosts=("tiny",))], ignore_index=True)
    return lambda: raises(tft_data(tmp, short)), [tmp / "cache"]


@case("tft-zero-encoder-length", r"^data.encoder_length=0 and data.prediction_length=4 must be positive$")
def _(tmp, t, cache):
    return lambda: raises(tft_data(tmp, metrics_table(), encoder_length=0)), []


@case(
    "tft-batch-larger-than-data",
    r"^data.batch_size=4096 \(x1 devices\) is larger than the training set \(\d+ samples\)",
)
def _(tmp, t, cache):
    tft_data(tmp, metrics_table())()  # the same data prepared once with a workable batch size
    return lambda: raises(tft_data(tmp, metrics_table(), batch_size=4096)), [tmp / "cache"]


# collect


def existing_collection(out: Path) -> Path:
    """A folder as `python -m zoo.collect` leaves it: one Parquet part and a journal not yet flushed."""
    out.mkdir()
    part = metrics_table(n=3, hosts=("me",)).rename(columns={"ts": "timestamp", "machine": "host"})
    part.to_parquet(out / "part-20240101T000000000000-000003.parquet", index=False)
    (out / "pending.jsonl").write_text(
        json.dumps({"timestamp": "2024-01-01T00:15:00.000Z", "host": "me"}) + "\n"
    )
    return out


def collect_main(tmp: Path, *overrides: str) -> Callable[[], str]:
    """`python -m zoo.collect *overrides` in this process, its config composed as the CLI composes it."""
    from zoo.collect import collect

    return lambda: raises(lambda: collect(compose_config(list(overrides), tmp / "run", "collect")))


@case(
    "collect-out-is-a-file-cli",
    r"^out=.*metrics.parquet: .*metrics.parquet is a file \(expected a folder of Parquet parts\)$",
)
def _(tmp, t, cache):
    (tmp / "metrics.parquet").write_bytes(b"PAR1 collected earlier")  # a single-file export of samples
    earlier = tmp / "metrics.parquet"
    run_dir = f"hydra.run.dir={tmp / 'run'}"
    return lambda: cli("zoo.collect", f"out={earlier}", "samples=1", run_dir), [earlier]


@case(
    "collect-bad-disk-path",
    r"^disk_path=/no/such/mount: no such file or folder \(expected a path on the filesystem",
)
def _(tmp, t, cache):
    out = existing_collection(tmp / "collected")
    return collect_main(tmp, f"out={out}", "samples=1", "disk_path=/no/such/mount"), [out]


@case("collect-zero-interval", r"^interval=0 must be a positive number$")
def _(tmp, t, cache):
    out = existing_collection(tmp / "collected")
    return collect_main(tmp, f"out={out}", "interval=0"), [out]


# -- the test -----------------------------------------------------------------------------------------------
def snapshot(paths: list[Path]) -> dict[str, str]:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_naming_the_culprit_and_loses_nothing(name, tmp_path, trained, cache_dir):
    build, pattern = CASES[name]
    attempt, protected = build(tmp_path, trained, cache_dir)
    before = snapshot(protected)
    assert not protected or before, f"{name}: nothing to protect was written"
    message = attempt()
    assert "\n" not in message and "Traceback" not in message
    assert re.search(pattern, message), f"{name}: {message!r} does not match {pattern!r}"
    if os.environ.get("ZOO_BAD_INPUTS_LOG"):  # docs/bad-inputs.md quotes the messages of a real run
        with open(os.environ["ZOO_BAD_INPUTS_LOG"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"case": name, "message": message}) + "\n")
    after = snapshot(protected)
    changed = [f for f, digest in before.items() if after.get(f) != digest]
    assert not changed, f"{name}: files written before the failure were changed or removed: {changed}"
