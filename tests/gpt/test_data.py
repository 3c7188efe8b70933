"""Text sources, tokenizers, token shards and windows of the GPT family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.core.datamodule import ResumableSampler
from zoo.core.errors import ZooError
from zoo.gpt.datamodule import TextDataModule
from zoo.gpt.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, tokenizer_from_json

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def make_dm(tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    kwargs.setdefault("num_workers", 0)
    return TextDataModule(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        ByteTokenizer,
        lambda: CharTokenizer.train([TEXT, "é€"], with_eot=True),
        lambda: HFTokenizer.train_bpe([TEXT] * 3, 300),
    ],
)
def test_tokenizers_round_trip_through_json(make):
    tok = make()
    text = "Before we proceed, hear me."
    again = tokenizer_from_json(tok.to_json())
    assert again.encode(text) == tok.encode(text)
    assert again.decode(tok.encode(text)) == text
    assert again.vocab_size == tok.vocab_size


def test_char_split_windows_and_full_validation_coverage(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    dm = make_dm(
        tmp_path,
        source="file",
        path=str(path),
        tokenizer="char",
        block_size=16,
        batch_size=4,
        val_fraction=0.1,
    )
    dm.prepare_data()
    dm.setup("fit")
    manifest = json.loads((dm.folder / "manifest.json").read_text())
    cut = int(len(TEXT) * 0.9)
    assert manifest["tokens"] == {"train": cut, "val": len(TEXT) - cut}
    assert manifest["val_chars"] == len(TEXT) - cut  # one document: no separators
    tok = dm.tokenizer()
    x, y = dm.train_set[3]
    assert tok.decode(x.tolist()) == TEXT[48:64] and tok.decode(y.tolist()) == TEXT[49:65]
    # Every validation target is scored exactly once, in order.
    targets = torch.cat([dm.val_set[i][1] for i in range(len(dm.val_set))])
    kept = targets[targets != -100]
    assert len(kept) == dm.val_stats["targets"] == len(TEXT) - cut - 1
    assert tok.decode(kept.tolist()) == TEXT[cut + 1 :]


def test_prepared_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    dm = make_dm(tmp_path, source="file", path=str(path), tokenizer="byte", block_size=8)
    dm.prepare_data()
    stamp = (dm.folder / "manifest.json").stat().st_mtime_ns
    again = make_dm(tmp_path, source="file", path=str(path), tokenizer="byte", block_size=8)
    again.prepare_data()
    assert again.folder == dm.folder and (dm.folder / "manifest.json").stat().st_mtime_ns == stamp
    path.write_text(TEXT + "more text")
    changed = make_dm(tmp_path, source="file", path=str(path), tokenizer="byte", block_size=8)
    assert changed.folder != dm.folder


def test_table_documents_are_shuffled_split_and_joined_by_eos(tmp_path):
    titles = [f"Show HN: project number {i}" for i in range(200)]
    path = tmp_path / "titles.csv"
    pd.DataFrame({"id": range(200), "title": titles}).to_csv(path, index=False)
    dm = make_dm(tmp_path, source="hf", hf_repo="julien040/hacker-news-posts", path=str(path), column="title",
                 shuffle_seed=1337, max_documents=150, val_fraction=0.1, val_split="last", tokenizer="bpe",
                 vocab_size=300, block_size=16)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    order = np.random.default_rng(1337).permutation(200)[:150]
    val_titles = [titles[i] for i in order[-15:]]
    tok = dm.tokenizer()
    val_ids = np.fromfile(dm.folder / "val_000.bin", dtype=np.uint16).tolist()
    assert tok.decode(val_ids) == "<eos>".join(val_titles) + "<eos>"
    assert dm.val_stats["chars"] == sum(map(len, val_titles)) + 15
    assert dm.model_kwargs()["vocab_size"] == 300


def test_hf_source_lists_and_downloads_file_by_file(tmp_path, monkeypatch):
    """The hub path, offline: the repo listing and hf_hub_download are pointed at local parquet files;
    only files matching data.hf_files are fetched, each deleted once read (it was not cached before)."""
    remote = tmp_path / "remote"
    for name, first in (
        ("sample/10BT/000.parquet", 0),
        ("sample/10BT/001.parquet", 30),
        ("other/x.parquet", 60),
    ):
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"title": [f"title {i}" for i in range(first, first + 30)]}).to_parquet(remote / name)
    fetched = []

    def fake_download(repo_id, filename, repo_type, revision, cache_dir):
        assert repo_id == "someone/titles" and repo_type == "dataset"
        local = Path(cache_dir) / "fetched" / filename
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes((remote / filename).read_bytes())
        fetched.append(local)
        return str(local)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, **kw: sorted(
        str(f.relative_to(remote)) for f in remote.rglob("*.parquet")) + ["README.md"])  # fmt: skip
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    dm = make_dm(tmp_path, source="hf", hf_repo="someone/titles", hf_files="sample/10BT", column="title",
                 tokenizer="byte", block_size=8)  # fmt: skip
    dm.prepare_data()
    manifest = json.loads((dm.folder / "manifest.json").read_text())
    assert [f.name for f in fetched] == ["000.parquet", "001.parquet"]
    assert not any(f.exists() for f in fetched)  # deleted after tokenizing (data.keep_downloads=false)
    assert manifest["sources"] == ["sample/10BT/000.parquet", "sample/10BT/001.parquet"]
    assert sum(manifest["documents"].values()) == 60


def test_url_source_is_downloaded_once_into_the_cache(tmp_path):
    path = tmp_path / "remote.txt"
    path.write_text(TEXT)
    dm = make_dm(tmp_path, source="url", url=path.as_uri(), tokenizer="char", block_size=8)
    dm.prepare_data()
    cached = tmp_path / "cache" / "downloads" / "remote.txt"
    assert cached.read_text() == TEXT


def test_synthetic_corpus_records_its_entropy_floor(tmp_path):
    dm = make_dm(tmp_path, source="synthetic", tokenizer="char", block_size=16,
                 synthetic={"n_tokens": 20000, "alphabet": "abcd", "order": 1, "concentration": 0.5, "seed": 1})  # fmt: skip
    dm.prepare_data()
    m = json.loads((dm.folder / "manifest.json").read_text())
    assert 0 < m["entropy_floor_nats"] < np.log(4)
    assert m["vocab_size"] == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "file", "path": "/no/such/corpus.txt"}, "data.path=/no/such/corpus.txt: no such file"),
        ({"source": "file", "path": "EMPTY"}, "the file is empty"),
        (
            {"source": "file", "path": "TABLE", "column": "body"},
            "no column 'body' (data.column): expected one of id, title",
        ),
        ({"source": "file", "path": "TABLE", "column": None}, "set data.column"),
        ({"tokenizer": "sentencepiece"}, "data.tokenizer=sentencepiece: expected one of"),
        ({"source": "file", "path": "TINY", "block_size": 512}, "fewer than data.block_size+1=513"),
        ({"batch_size": 0}, "data.batch_size must be a positive integer"),
    ],
)
def test_bad_text_input_is_a_one_line_error(tmp_path, kwargs, message):
    files = {"EMPTY": "  \n", "TABLE": "id,title\n1,a\n", "TINY": "tiny text, just a few characters" * 3}
    for key, content in files.items():
        if kwargs.get("path") == key:
            target = tmp_path / ("t.csv" if key == "TABLE" else "t.txt")
            target.write_text(content)
            kwargs = {**kwargs, "path": str(target)}
    with pytest.raises(ZooError) as err:
        dm = make_dm(tmp_path, **kwargs)
        dm.prepare_data()
        dm.setup("fit")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sampler_shards_ranks_and_resumes_mid_epoch():
    full = list(ResumableSampler(10, shuffle=True, seed=3))
    assert sorted(full) == list(range(10))
    ranks = [list(ResumableSampler(10, shuffle=True, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # padded to equal length for training
    assert set().union(*ranks) == set(range(10))
    evals = [
        list(ResumableSampler(10, shuffle=False, seed=3, rank=r, world_size=3, pad=False)) for r in range(3)
    ]
    assert sorted(sum(evals, [])) == list(range(10))  # evaluation: no duplicates
    resumed = ResumableSampler(10, shuffle=True, seed=3)
    resumed.resume_at(epoch=0, consumed=4)
    assert list(resumed) == full[4:] and len(resumed) == 10
    assert list(resumed) == full  # only the resumed epoch is cut
    resumed.set_epoch(1)
    assert list(resumed) != full


def test_weighted_sampler_draws_by_weight_and_resumes():
    weights = torch.tensor([0.0, 1.0, 1.0, 8.0])
    full = list(ResumableSampler(4, shuffle=True, seed=5, weights=weights))
    assert len(full) == 4 and 0 not in full  # a zero weight is never drawn
    many = ResumableSampler(4000, shuffle=True, seed=5, weights=weights.repeat(1000))
    counts = torch.bincount(torch.tensor(list(many)) % 4, minlength=4)
    assert counts[0] == 0 and 5 < counts[3] / counts[1] < 11  # 8:1 in expectation
    resumed = ResumableSampler(4, shuffle=True, seed=5, weights=weights)
    resumed.resume_at(epoch=0, consumed=2)
    assert list(resumed) == full[2:]
    with pytest.raises(ZooError, match="sampler weights"):
        ResumableSampler(3, shuffle=True, seed=5, weights=weights)
