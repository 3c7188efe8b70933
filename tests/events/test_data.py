"""Schemas, vocabularies, readers, bad input and the synthetic generator's floor."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.events.conftest import TINY
from zoo.core.errors import ZooError
from zoo.events.datamodule import EventDataModule
from zoo.events.schema import EOC, PAD, SPECIALS, Schema, Vocab, field_tokens, token_of
from zoo.events.sources import normalize, read_table
from zoo.events.synthetic import generate_hr

LOG_SCHEMA = {
    "target": "Activity",
    "fields": [
        {"name": "Activity", "stream": "activity", "column": "activity"},
        {"name": "Resource", "stream": "resource", "column": "resource", "id": True},
        {"name": "Weekday", "stream": "time", "derive": "weekday"},
        {"name": "SincePrev", "stream": "time", "derive": "since_prev"},
    ],
}


def write_log(path, rows):
    pd.DataFrame(rows, columns=["case", "act", "when", "who"]).to_csv(path, index=False)
    return path


def small_log(n_cases=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        start = pd.Timestamp("2024-03-01T08:00:00+01:00") + pd.Timedelta(days=int(c))
        for i in range(int(rng.integers(2, 6))):
            rows.append(
                [
                    f"c{c}",
                    ["A", "B", "C"][min(i, 2)],
                    (start + pd.Timedelta(hours=3 * i)).isoformat(),
                    f"r{int(rng.integers(0, 3))}",
                ]
            )
    return rows


def file_dm(path, cache_dir, **kw):
    settings = {"source": "file", "path": str(path), "schema": LOG_SCHEMA, "split": "case_start",
                "columns": {"case_id": "case", "timestamp": "when", "activity": "act", "resource": "who"},
                "src_seq_len": 4, "tgt_seq_len": 3, "batch_size": 4, "cache_dir": str(cache_dir), "num_workers": 0} | kw  # fmt: skip
    return EventDataModule(**settings)


def test_samples_are_every_prefix_with_end_of_case(tmp_path):
    rows = [
        ["k1", "A", "2024-01-01T10:00:00Z", "x"],
        ["k1", "B", "2024-01-01T11:00:00Z", "y"],
        ["k1", "C", "2024-01-02T10:00:00Z", "x"],
    ]
    rows += [[f"o{i}", "A", f"2024-02-0{i + 1}T10:00:00Z", "x"] for i in range(3)]  # one-event cases
    dm = file_dm(write_log(tmp_path / "log.csv", rows), tmp_path / "cache", fractions=[1.0, 0.0, 0.0])
    dm.setup()
    manifest = dm.manifest
    assert manifest["cases_with_one_event"] == 3  # counted, and still used: each predicts <eoc>
    ds = dm.datasets["train"]
    assert len(ds) == 3 + 3  # prefixes 1, 2, 3 of k1 and prefix 1 of each one-event case
    batch = ds.__getitems__(list(range(len(ds))))
    vocab = dm.vocab()
    act = [vocab.decode("Activity", int(i)) for i in batch["tgt"][:, 0, 0]]
    assert act == ["B", "C", "<eoc>", "<eoc>", "<eoc>", "<eoc>"]
    # Prefix 1 of k1: source = [A], targets = B, C, <eoc>; the decoder input is the targets shifted by <bos>.
    first = batch["tgt"][0, :, 0].tolist()
    assert first == [vocab.index["Activity"]["B"], vocab.index["Activity"]["C"], EOC]
    assert batch["tgt_in"][0, 1:, 0].tolist() == first[:2]
    assert batch["src_len"].tolist() == [1, 2, 3, 1, 1, 1]
    assert batch["src"][0, 1:].eq(PAD).all()  # right-padded
    assert batch["dt"][0, 0].item() == pytest.approx(1 / 24, rel=1e-4)  # one hour, in days
    assert np.isnan(batch["dt"][0, 2].item())  # no time to <eoc>


def test_split_column_and_unknown_values_are_counted(tmp_path):
    rows = small_log(20)
    df = pd.DataFrame(rows, columns=["case", "act", "when", "who"])
    df["split"] = np.where(df["case"].str[1:].astype(int) < 14, "train", "test")
    df.loc[df["case"] == "c19", "who"] = "never-seen"
    df.to_csv(tmp_path / "log.csv", index=False)
    dm = file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column")
    dm.setup()
    assert dm.manifest["samples"]["val"] == 0 and dm.manifest["samples"]["test"] > 0
    assert dm.manifest["unknown_values"]["test"]["Resource"] == int((df["who"] == "never-seen").sum())
    assert "never-seen" not in dm.vocab().tokens["Resource"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["who"]), "column 'who' (mapped by data.columns.resource) not found"),
        (
            lambda df: df.assign(when=df["when"].where(df.index != 3, "not a time")),
            "1 timestamps in column 'when' cannot be parsed (first at row 3: 'not a time')",
        ),
        (lambda df: df.iloc[:0], "the event log is empty"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, mutate, message):
    df = mutate(pd.DataFrame(small_log(10), columns=["case", "act", "when", "who"]))
    df.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(ZooError) as err:
        file_dm(tmp_path / "log.csv", tmp_path / "cache").prepare_data()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_zero_byte_file_and_unknown_format(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ZooError, match="the event log is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "log.txt").write_text("x")
    with pytest.raises(ZooError, match="unknown format"):
        read_table(tmp_path / "log.txt")


def test_xes_reader_plain_and_gz(tmp_path):
    xes = """<?xml version="1.0" encoding="UTF-8" ?>
<log xes.version="1.0" xmlns="http://www.xes-standard.org/">
  <global scope="event"><string key="concept:name" value="__INVALID__"/></global>
  <trace><string key="concept:name" value="case1"/><string key="owner" value="ann"/>
    <event><string key="concept:name" value="Open"/><date key="time:timestamp" value="2010-01-13T08:40:25.000+02:00"/><string key="org:resource" value="Value 2"/></event>
    <event><string key="concept:name" value="Close"/><date key="time:timestamp" value="2010-01-14T08:40:25.000+01:00"/><string key="org:resource" value="Value 3"/></event>
  </trace>
  <trace><string key="concept:name" value="case2"/>
    <event><string key="concept:name" value="Open"/><date key="time:timestamp" value="2010-02-01T10:00:00.000+01:00"/></event>
  </trace>
</log>"""
    (tmp_path / "log.xes").write_text(xes)
    with gzip.open(tmp_path / "log.xes.gz", "wt") as fh:
        fh.write(xes)
    for name in ("log.xes", "log.xes.gz"):
        df = read_table(tmp_path / name)
        assert df["case_id"].tolist() == ["case1", "case1", "case2"]
        assert df["activity"].tolist() == ["Open", "Close", "Open"]
        assert df.loc[0, "case:owner"] == "ann" and pd.isna(df.loc[2, "resource"])
    norm = normalize(df, {}, ["activity", "resource"], "test")
    assert str(norm["timestamp"].dt.tz) == "UTC" and norm["timestamp"].iloc[0].hour == 6  # 08:40+02:00


def test_vocab_specials_caps_and_json_round_trip():
    schema = Schema.from_dict(LOG_SCHEMA)
    df = normalize(
        pd.DataFrame(small_log(15), columns=["case_id", "activity", "timestamp", "resource"]),
        {},
        ["activity", "resource"],
        "t",
    )
    tokens = field_tokens(df, schema)
    vocab = Vocab.build(tokens, schema, id_vocab_size=len(SPECIALS) + 2)
    assert all(v[: len(SPECIALS)] == SPECIALS for v in vocab.tokens.values())
    assert len(vocab.tokens["Resource"]) == len(SPECIALS) + 2  # capped: the rarest resource -> <unk>
    assert len(vocab.tokens["Activity"]) == len(SPECIALS) + 3  # not an id field: never capped
    assert Vocab.from_json(vocab.to_json()) == vocab
    ids, unknown = vocab.encode(tokens, schema.names)
    assert unknown["Resource"] == int((~tokens["Resource"].isin(vocab.tokens["Resource"])).sum()) > 0
    with pytest.raises(ZooError, match="the vocabulary does not match the checkpoint"):
        vocab.check_matches({**vocab.sizes(), "Activity": 99}, "vocab.json")


def test_synthetic_floor_tokens_agree_with_the_schema(compose):
    """The generator scores candidates with token_of(); the data pipeline derives tokens with
    field_tokens(). If they disagreed, the floor would be about other values than the ones trained on."""
    cfg = compose("model=event_predictor", *TINY)
    schema = Schema.from_dict(dict(cfg.data.schema))
    raw, nll = generate_hr(schema, n_employees=3, n_weeks=6, seed=5)
    assert nll.shape == (len(raw), 17) and (nll >= -1e-9).all()
    df = normalize(
        raw, {}, [c for c in schema.raw_columns() if c != "case_id"], "t", ("timestamp", "reference_time")
    )
    derived = field_tokens(df, schema)
    for i in range(0, len(df), 7):
        record = df.iloc[i].to_dict()
        for f in schema.fields:
            if f.derive:
                assert token_of(f, record, None) == derived.iloc[i][f.name]
    # The floor is not trivially zero: the generator makes real choices (hours, locations, absences).
    assert nll[:, schema.names.index("HoursWorked")].mean() > 0.3


def test_synthetic_manifest_has_a_floor_over_the_validation_targets(compose, cache_dir):
    from hydra.utils import instantiate

    cfg = compose("model=event_predictor", *TINY)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    manifest = json.loads((dm.folder / "manifest.json").read_text())
    floor = manifest["entropy_floor_nats"]
    assert set(floor["per_field"]) == set(dm.schema.names)
    assert floor["mean"] == pytest.approx(np.mean(list(floor["per_field"].values())))
    assert 0.02 < floor["mean"] < 1.0
    # 12 weeks, one year: the validation weeks' numbers never occur in training (with the default two
    # years they do); counted, not silently dropped.
    assert manifest["unknown_values"]["val"]["Time_Event_Week"] > 0


def test_weeks_split_keeps_each_event_a_target_of_one_split(tmp_path):
    start = pd.Timestamp("2024-01-01T09:00:00Z")
    rows = [["k", "ABC"[d % 3], (start + pd.Timedelta(days=d)).isoformat(), "x"] for d in range(70)]
    dm = file_dm(
        write_log(tmp_path / "log.csv", rows), tmp_path / "cache", split="weeks", val_every=5, end_token=False
    )
    dm.setup()
    targets = {}
    for split in ("train", "val"):
        ds = dm.datasets[split]
        targets[split] = {int(t + j) for t, end in zip(ds.t, ds.end) for j in range(int(end - t)) if j < ds.T}
    assert targets["train"] and targets["val"] and not targets["train"] & targets["val"]
    assert {d // 7 % 5 for d in targets["val"]} == {4}  # days 28-34 and 63-69: the 5th and 10th weeks


def test_prefix_ceiling_counts_each_prefix_majority_and_ignores_padding():
    from zoo.events.evaluate import prefix_ceiling

    # Field 0 is the activity. Prefix [5] is followed by 6, 6, 7 (best: 2 of 3); [5, 6] and [5, 7] by one
    # answer each; the last row is padding. Row 1 has junk after its length: the same prefix as row 0.
    src = np.zeros((6, 3, 1), dtype=np.int64)
    src[:3, 0, 0] = 5
    src[1, 1, 0] = 9
    src[3, :2, 0] = [5, 6]
    src[4, :2, 0] = [5, 7]
    data = {
        "src": src,
        "src_len": np.array([1, 1, 1, 2, 2, 1]),
        "next": np.array([[6], [6], [7], [8], [9], [PAD]]),
    }
    assert prefix_ceiling(data, 0) == pytest.approx(4 / 5)


def test_prefix_lookup_backs_off_to_the_current_activity_then_the_majority():
    from zoo.events.evaluate import prefix_lookup

    def rows(prefixes, nexts):
        src = np.zeros((len(prefixes), 3, 1), dtype=np.int64)
        for i, p in enumerate(prefixes):
            src[i, : len(p), 0] = p
        return {"src": src, "src_len": np.array([len(p) for p in prefixes]),
                "current": np.array([[p[-1]] for p in prefixes]), "next": np.array([[n] for n in nexts]),
                "dt": np.zeros(len(prefixes))}  # fmt: skip

    # Seen prefix [5, 6] -> 8 (twice) though after 6 alone 9 wins; unseen [7, 6] backs off to 6 -> 9;
    # unseen [4] (4 never current) backs off to the most frequent next value, 9.
    fit = rows([[5, 6], [5, 6], [6], [6], [6], [5]], [8, 8, 9, 9, 9, 6])
    assert prefix_lookup(fit, rows([[5, 6], [7, 6], [4]], [0, 0, 0]), 0).tolist() == [8, 9, 9]


def test_since_start_buckets_agree_between_series_and_single_events():
    times = pd.Series(
        pd.to_datetime(["2024-01-01T10:00Z", "2024-01-01T10:30Z", "2024-01-09T10:00Z", "2024-01-05T00:00Z"])
    )
    cases = pd.Series(["a", "a", "a", "b"])
    field = Schema.from_dict(
        {"target": "S", "fields": [{"name": "S", "stream": "t", "derive": "since_start"}]}
    ).fields[0]
    tokens = field_tokens(pd.DataFrame({"case_id": cases, "timestamp": times}), Schema([field], "S"))[
        "S"
    ].tolist()
    # 0 s, 30 min and 8 days open fall in different buckets; a case's first event is always bucket 1.
    assert tokens[0] == tokens[3] and len(set(tokens[:3])) == 3
    singles = [token_of(field, {"timestamp": t}, None, case_start=times[0]) for t in times[:3]]
    assert singles == tokens[:3]


def drifting_log(path):
    """40 cases by start; split column: 20 train, 10 val, 10 test."""
    rows = small_log(40)
    df = pd.DataFrame(rows, columns=["case", "act", "when", "who"])
    n = df["case"].str[1:].astype(int)
    df["split"] = np.select([n < 20, n < 30], ["train", "val"], "test")
    df.to_csv(path, index=False)
    return df


def test_train_from_val_moves_the_oldest_validation_cases_into_training(tmp_path):
    df = drifting_log(tmp_path / "log.csv")
    base = file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column")
    moved = file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column", train_from_val=0.5)
    base.setup()
    moved.setup()
    sizes = df.groupby("case", sort=False).size()  # samples per case: every prefix + <eoc>
    first_val = sizes[[f"c{i}" for i in range(20, 25)]].sum()
    assert moved.manifest["samples"]["train"] == base.manifest["samples"]["train"] + first_val
    assert moved.manifest["samples"]["val"] == base.manifest["samples"]["val"] - first_val
    assert moved.manifest["samples"]["test"] == base.manifest["samples"]["test"]
    # The cases that stayed in validation are the newest ones: none of their events is a training target.
    a = moved.arrays
    starts = a["event_s"][a["case_start"]]
    assert starts[a["val_t"] - 1].min() > starts[a["train_t"] - 1].max()
    with pytest.raises(ZooError, match=r"data.train_from_val=0.5 needs a case split"):
        file_dm(tmp_path / "log.csv", tmp_path / "cache", split="time", train_from_val=0.5)


def test_recency_weights_halve_per_half_life_and_drive_the_sampler(tmp_path):
    drifting_log(tmp_path / "log.csv")
    dm = file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column", recency_half_life_days=5)
    dm.setup()
    w = dm.train_weights()
    t0 = dm.arrays["event_s"][dm.arrays["case_start"]][dm.arrays["train_t"] - 1]
    age = (t0.max() - t0) / 86400.0
    age -= age.min()  # the newest training case has weight 1
    np.testing.assert_allclose(w.numpy(), 0.5 ** (age / 5), rtol=1e-12)
    assert w.max() == 1.0 and w.min() < 0.1  # cases start a day apart: 19 days = ~3.8 half-lives
    drawn = torch.tensor(list(dm.train_dataloader().sampler))
    newest, oldest = w >= 0.5, w < 0.125
    assert drawn.numel() == len(w)
    # Samples of the newest 5 days are drawn far more often than those older than 15 days.
    assert np.isin(drawn, np.flatnonzero(newest)).mean() > 3 * np.isin(drawn, np.flatnonzero(oldest)).mean()
    assert file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column").train_weights() is None


def test_walk_forward_fine_tunes_only_on_what_is_known_at_each_origin(tmp_path):
    from zoo.events.backtest import known_samples, walk_forward
    from zoo.events.module import EventModule

    drifting_log(tmp_path / "log.csv")
    dm = file_dm(tmp_path / "log.csv", tmp_path / "cache", split="column")
    dm.setup()
    event_s, a = dm.event_seconds(), dm.arrays
    cutoff = float(np.median(event_s))
    known, when = known_samples(dm, cutoff)
    batch = known.__getitems__(list(range(len(known))))
    target_idx = known.t[:, None] + np.arange(known.T)[None, :]
    real = (batch["tgt"][..., 0] != PAD).numpy() & (batch["tgt"][..., 0] != EOC).numpy()
    assert (event_s[target_idx[real]] < cutoff).all()  # no target from the future
    ends = known.end[(batch["tgt"][..., 0] == EOC).any(1).numpy()]
    assert (event_s[ends - 1] < cutoff).all()  # a case ends only once its last event is in the past
    assert (when < cutoff).all() and (when == event_s[known.t - 1]).all()
    # ...and nothing known is left out: every event before the cutoff that follows an earlier one is a target.
    first = a["case_start"] == np.arange(len(event_s))
    assert set(known.t) == set(np.flatnonzero((event_s < cutoff) & ~first)) | set(
        known.t[known.eoc & (known.t == known.end)]
    )
    module = EventModule(
        net={"d_model": 8, "n_heads": 2, "dim_feedforward": 16}, optim={}, **dm.model_kwargs()
    )
    static = walk_forward(module, dm, "test", cutoffs=3, steps=0)
    assert static["backtest/model/next_activity_acc"] == static["backtest/static/next_activity_acc"]
    tuned = walk_forward(module, dm, "test", cutoffs=3, steps=5, half_life_days=7)
    assert (
        tuned["backtest/cutoffs"] == 3
        and tuned["backtest/period0/known_samples"] < tuned["backtest/period2/known_samples"]
    )
    assert tuned["backtest/static/next_activity_acc"] == static["backtest/static/next_activity_acc"]
