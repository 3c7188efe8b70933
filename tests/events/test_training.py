"""Recipes compose and train; vocabularies travel with checkpoints; the learning and real-log tests."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.events.conftest import TINY
from zoo.core.errors import ZooError
from zoo.train import train

DATA = ["events/synthetic_hr", "events/synthetic_hr_core", "events/helpdesk", "events/bpi2012_w"]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("experiment", [None, "event_cpu_baseline", "event_gpu"])
def test_every_recipe_composes(compose, data, experiment):
    recipe = [f"experiment={experiment}"] if experiment else []
    cfg = compose("model=event_predictor", *recipe, f"data={data}")
    assert (
        cfg.model._target_ == "zoo.events.EventModule" and cfg.data._target_ == "zoo.events.EventDataModule"
    )
    assert cfg.data.schema.target in [f.name for f in cfg.data.schema.fields]
    if experiment == "event_cpu_baseline":
        assert (cfg.data.src_seq_len, cfg.data.tgt_seq_len, cfg.data.id_vocab_size, cfg.data.batch_size) == (
            20,
            20,
            100,
            16,
        )
        net = cfg.model.net
        assert (net.d_model, net.n_heads, net.encoder_layers, net.decoder_layers) == (32, 4, 1, 1)
        assert cfg.trainer.max_epochs == 20 and cfg.trainer.accelerator == "cpu"
    if experiment == "event_gpu":
        assert (cfg.data.src_seq_len, cfg.data.tgt_seq_len, cfg.data.id_vocab_size, cfg.data.batch_size) == (
            200,
            300,
            1000,
            8,
        )
        net, optim, tr = cfg.model.net, cfg.model.optim, cfg.trainer
        assert (net.d_model, net.n_heads, net.encoder_layers, net.decoder_layers) == (64, 8, 3, 5)
        assert (optim.name, optim.lr, optim.scheduler, optim.factor, optim.patience) == (
            "adam",
            3e-4,
            "plateau",
            0.5,
            3,
        )
        assert (tr.accumulate_grad_batches, tr.gradient_clip_val, tr.precision, tr.max_epochs) == (
            8,
            1.0,
            "bf16-mixed",
            500,
        )


def test_the_file_config_needs_a_path(compose):
    cfg = compose("model=event_predictor", "data=events/file", "data.path=/nowhere/log.csv")
    from hydra.utils import instantiate

    with pytest.raises(Exception, match="no such file"):
        instantiate(cfg.data)


@pytest.mark.parametrize(
    "recipe",
    [
        ["experiment=event_cpu_baseline"],
        # Shrunk to CPU: the windows, width and depth of the GPU recipe, on a CPU, with its precision,
        # accumulation, clipping and plateau scheduler.
        [
            "experiment=event_gpu",
            "trainer.accelerator=cpu",
            "data.num_workers=0",
            "data.src_seq_len=40",
            "data.tgt_seq_len=60",
        ],
    ],
)
def test_fast_dev_run(compose, recipe):
    cfg = compose("model=event_predictor", *recipe, *TINY, "debug=fdr", "callbacks=none")
    _, metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss/mean"]))
    n_fields = len(cfg.data.schema.fields)
    # loss/sum is the source report's number: n_fields times the mean the model trains on.
    assert metrics["val/loss/sum"] == pytest.approx(n_fields * metrics["val/loss/mean"], rel=1e-5)
    for name in (
        "val/acc/EventType",
        "val/loss/Time_Event_Hour",
        "val/next_acc",
        "val/time_mae_days",
        "train/loss/mean",
    ):
        assert name in metrics


def test_per_field_train_metrics_reach_the_logger(compose, tmp_path):
    """Per-field train loss/accuracy bypass self.log (for speed) but must still land in the logger, on
    the same step as train/loss/mean, and agree with it."""
    import pandas as pd

    cfg = compose("model=event_predictor", "experiment=event_cpu_baseline", *TINY, "callbacks=none", "logger=csv",
                  "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.max_epochs=1",
                  "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false", "export=false")  # fmt: skip
    train(cfg)
    rows = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    train_rows = rows.dropna(subset=["train/loss/mean"]).set_index("step")
    fields = rows.dropna(subset=["train/acc/EventType"]).set_index("step")
    assert list(train_rows.index) == list(fields.index) == [1, 3]
    names = [f.name for f in cfg.data.schema.fields]
    per_field = fields[[f"train/loss/{n}" for n in names]]
    assert per_field.mean(axis=1).to_numpy() == pytest.approx(
        train_rows["train/loss/mean"].to_numpy(), rel=1e-5
    )
    acc = fields[[f"train/acc/{n}" for n in names]].to_numpy()
    assert ((acc >= 0) & (acc <= 1)).all()


def test_vocab_round_trip_through_a_checkpoint(compose, tmp_path):
    from zoo.events.module import EventModule
    from zoo.events.schema import Vocab

    cfg = compose(
        "model=event_predictor",
        "experiment=event_cpu_baseline",
        *TINY,
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.max_epochs=1",
        "~callbacks.rich_progress_bar",
        "~callbacks.throughput",
        "trainer.enable_progress_bar=false",
    )
    train(cfg)
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    beside = Vocab.from_json((run / "checkpoints" / "vocab.json").read_text())
    model = EventModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    from zoo.core.checkpoint import load_checkpoint

    raw = load_checkpoint(ckpt)
    model.on_load_checkpoint(raw)
    assert model.vocab == beside == Vocab(raw["zoo_vocab"])
    assert len(model.vocab.tokens) == 17 and model.vocab.tokens["EventType"][:4] == [
        "<pad>",
        "<unk>",
        "<bos>",
        "<eoc>",
    ]
    # The export carries it too and loads without Lightning.
    from zoo.events.export import load

    net, vocab, schema = load(run / "export")
    assert vocab == model.vocab and schema.names == model.names
    # A different vocabulary is refused in one line.
    other = {k: list(v) for k, v in beside.tokens.items()}
    other["EventType"] = other["EventType"][:-1]
    with pytest.raises(ZooError, match="the vocabulary does not match the checkpoint") as err:
        model.check_vocab(Vocab(other), "vocab.json")
    assert "\n" not in str(err.value)
    swapped = {k: list(v) for k, v in beside.tokens.items()}
    swapped["EventType"][4], swapped["EventType"][5] = swapped["EventType"][5], swapped["EventType"][4]
    with pytest.raises(ZooError, match=r"tokens differ for fields \['EventType'\]"):
        model.check_vocab(Vocab(swapped), "vocab.json")


@pytest.mark.slow
def test_cli_train_eval_predict(tmp_path, cache_dir, compose):
    """The three entry points as a user runs them, on a small real-format log written to disk."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows, flows = (
        [],
        [["Open", "Assign", "Fix", "Close"], ["Open", "Reject"], ["Open", "Triage", "Assign", "Close"]],
    )
    for c in range(160):
        start = pd.Timestamp("2024-01-01T09:00:00Z") + pd.Timedelta(hours=7 * c)
        for i, act in enumerate(flows[c % 3]):
            rows.append(
                {
                    "Case": f"C{c}",
                    "Task": act,
                    "When": (start + pd.Timedelta(hours=5 * i)).isoformat(),
                    "Who": f"u{rng.integers(0, 4)}",
                }
            )
    log = pd.DataFrame(rows)
    log.to_csv(tmp_path / "log.csv", index=False)
    mapping = [
        "data.columns.case_id=Case",
        "data.columns.timestamp=When",
        "data.columns.activity=Task",
        "data.columns.resource=Who",
    ]
    env = {"OMP_NUM_THREADS": "1"}
    run = tmp_path / "train"
    res = run_cli("zoo.train", "model=event_predictor", "experiment=event_cpu_baseline", "data=events/file", f"data.path={tmp_path / 'log.csv'}",
                  *mapping, "trainer.max_epochs=20", "model.optim.lr=0.005", "logger=none", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run}",
                  "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    res = run_cli(
        "zoo.eval",
        f"ckpt_path={ckpt}",
        "split=test",
        "backtest_cutoffs=2",
        "backtest_steps=3",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["metrics"]
    for who in ("model", "majority", "bigram", "backtest/model", "backtest/bigram"):
        assert 0.0 <= metrics[f"{who}/next_activity_acc"] <= 1.0
    # The walk-forward periods partition the split: without fine-tuning it is the ordinary score.
    assert metrics["backtest/static/next_activity_acc"] == pytest.approx(metrics["model/next_activity_acc"])
    assert metrics["backtest/cutoffs"] == 2
    # What follows Assign depends on whether the case went through Triage: the model sees the history,
    # the bigram baseline only the current activity.
    assert metrics["model/next_activity_acc"] > metrics["bigram/next_activity_acc"]
    history = log[log["Case"].isin(["C1", "C2"])].groupby("Case").head(2).copy()
    history.loc[history.index[0], "Who"] = "new-person"  # unseen in training -> <unk>, counted
    history.to_csv(tmp_path / "history.csv", index=False)
    out = tmp_path / "pred.csv"
    res = run_cli(
        "zoo.predict",
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'history.csv'}",
        "k=3",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'pred'}",
        env=env,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 input values never seen in training were read as <unk> (Resource: 1)" in res.stdout
    pred = pd.read_csv(out)
    assert set(pred["case_id"]) == {"C1", "C2"} and {
        "Activity",
        "Activity_p",
        "Resource_p",
        "days_to_event",
    } <= set(pred.columns)
    assert pred["Activity_p"].between(0, 1).all()
    # C1 = Open, Reject -> the case ends (no rows after <eoc>); C2 = Open, Triage -> Assign, Close, <eoc>.
    assert pred[pred["case_id"] == "C1"]["Activity"].tolist() == ["<eoc>"]
    assert pred[pred["case_id"] == "C2"]["Activity"].tolist() == ["Assign", "Close", "<eoc>"]
    # In-process (no more interpreter start-ups): a vocab.json of another run, and a history missing a
    # mapped column, are refused in one line.
    from zoo.predict import predict

    vocab = json.loads((run / "checkpoints" / "vocab.json").read_text())
    vocab["Activity"].append("Extra")
    (tmp_path / "other_vocab.json").write_text(json.dumps(vocab))
    cfg = compose(
        f"ckpt_path={ckpt}",
        f"input={tmp_path / 'history.csv'}",
        f"vocab={tmp_path / 'other_vocab.json'}",
        config_name="predict",
    )
    with pytest.raises(ZooError, match="the vocabulary does not match the checkpoint"):
        predict(cfg)
    history.drop(columns=["Who"]).to_csv(tmp_path / "bad.csv", index=False)
    cfg = compose(f"ckpt_path={ckpt}", f"input={tmp_path / 'bad.csv'}", config_name="predict")
    with pytest.raises(ZooError, match=r"column 'Who' \(mapped by data.columns.resource\) not found"):
        predict(cfg)
    cfg = compose(f"ckpt_path={ckpt}", f"input={tmp_path / 'history.csv'}", "k=50", config_name="predict")
    with pytest.raises(ZooError, match="k=50 is more than the model's target window"):
        predict(cfg)


@pytest.mark.slow
def test_learns_the_synthetic_log_down_to_its_entropy_floor(compose):
    """Four epochs of the CPU baseline on the 7-field synthetic log: validation loss within 25% of the
    floor no model can beat (measured 1.11x; an untrained model is at ~10x). Below 0.9x would mean the
    targets leak into the inputs."""
    from hydra.utils import instantiate

    cfg = compose("model=event_predictor", "experiment=event_cpu_baseline", "data=events/synthetic_hr_core", "callbacks=none",
                  "trainer.max_epochs=4", "model.optim.lr=0.003", "trainer.enable_progress_bar=false")  # fmt: skip
    _, metrics = train(cfg)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    floor = json.loads((dm.folder / "manifest.json").read_text())["entropy_floor_nats"]["mean"]
    ratio = metrics["val/loss/mean"] / floor
    assert 0.9 < ratio < 1.25, (
        f"val/loss/mean {metrics['val/loss/mean']:.4f} vs floor {floor:.4f}: ratio {ratio:.3f}"
    )


@pytest.mark.data
def test_real_log_smoke(shared_data, compose):
    """Helpdesk from ../shared: the benchmark split, the bigram reference number (68.6%) reproduced by our
    protocol code, a short training, and the XES original read by our parser."""
    from hydra.utils import instantiate

    from zoo.events.evaluate import evaluate_all
    from zoo.events.sources import read_table

    cfg = compose("model=event_predictor", "experiment=event_log", "data=events/helpdesk", f"paths.shared_data_dir={shared_data}",
                  "callbacks=none", "trainer.max_epochs=1", "trainer.limit_train_batches=15", "trainer.limit_val_batches=3",
                  "trainer.enable_progress_bar=false", "export=false")  # fmt: skip
    _, metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss/mean"]))
    dm = instantiate(cfg.data)
    dm.setup()
    m = dm.manifest
    assert m["cases"] == 4580 and m["events"] == 21348
    # Every prefix of every case plus the end-of-case prediction after the last event: one sample per event.
    assert sum(m["samples"].values()) == m["events"]
    scores = evaluate_all(None, dm, "test")
    assert scores["bigram/next_activity_acc"] == pytest.approx(0.686, abs=0.001)
    assert scores["majority/next_activity_acc"] < scores["bigram/next_activity_acc"]
    # The activity-prefix ceiling (fit on the test split itself), checked against a separate pandas count.
    assert scores["ceiling/next_activity_acc"] == pytest.approx(0.818, abs=0.001)
    raw = read_table(shared_data / "events" / "raw" / "Helpdesk.xes.gz")
    assert len(raw) == 21348 and raw["case_id"].nunique() == 4580


def test_id_unk_rate_hides_only_id_inputs_in_training():
    from zoo.events.module import EventModule
    from zoo.events.schema import SPECIALS, UNK

    schema = {"target": "A", "fields": [{"name": "A", "stream": "a", "column": "a"},
                                        {"name": "R", "stream": "r", "column": "r", "id": True}]}  # fmt: skip
    vocab = {"A": [*SPECIALS, "x", "y"], "R": [*SPECIALS, *(f"r{i}" for i in range(20))]}
    kwargs = dict(net={"d_model": 8, "n_heads": 2, "dim_feedforward": 16}, optim={}, schema=schema, vocab=vocab,
                  src_seq_len=50, tgt_seq_len=50)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.stack([torch.randint(4, 6, (64, 50), generator=g), torch.randint(4, 24, (64, 50), generator=g)], -1)
             for k in ("src", "tgt_in", "tgt")}  # fmt: skip
    batch["src"][:, -5:] = 0  # padding stays padding
    torch.manual_seed(0)
    out = EventModule(**kwargs, id_unk_rate=0.3)._unk_inputs(batch)
    for key in ("src", "tgt_in"):
        changed = out[key] != batch[key]
        assert not changed[..., 0].any()  # the activity is not an id field
        assert (out[key][..., 1][changed[..., 1]] == UNK).all()
        assert changed[..., 1].float().mean() == pytest.approx(
            0.3 * (45 / 50 if key == "src" else 1), abs=0.02
        )
        assert (out[key][:, -5:] == batch[key][:, -5:]).all() or key == "tgt_in"
    assert out["tgt"] is batch["tgt"]  # targets keep their real values
    assert EventModule(**kwargs)._unk_inputs(batch) is batch
    with pytest.raises(ZooError, match="model.id_unk_rate=1.5"):
        EventModule(**kwargs, id_unk_rate=1.5)


@pytest.mark.data
def test_recent_recipe_trains_on_helpdesk(shared_data, compose):
    """event_log_recent: older validation cases join training, samples are recency-weighted, SinceStart is a
    field; a few steps train and the later validation cases are still there to choose the checkpoint."""
    from hydra.utils import instantiate

    cfg = compose("experiment=event_log_recent", f"paths.shared_data_dir={shared_data}", "callbacks=none",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.limit_val_batches=3",
                  "trainer.enable_progress_bar=false", "export=false")  # fmt: skip
    assert cfg.data.name == "helpdesk"
    _, metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss/mean"])) and "val/acc/SinceStart" in metrics
    dm = instantiate(cfg.data)
    dm.setup()
    standard = instantiate(
        compose("experiment=event_log", "data=events/helpdesk", f"paths.shared_data_dir={shared_data}").data
    )
    standard.setup()
    assert (
        dm.manifest["samples"]["test"] == standard.manifest["samples"]["test"]
    )  # the test split is untouched
    assert dm.manifest["samples"]["train"] > standard.manifest["samples"]["train"]
    assert 0 < dm.manifest["samples"]["val"] < standard.manifest["samples"]["val"]
    w = dm.train_weights()
    assert w.max() == 1.0 and w.min() < 1e-2  # 2+ years of training cases at a 90-day half-life
