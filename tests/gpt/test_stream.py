"""The streaming corpus pipeline of the GPT family: readers, hash split, fixed-size shards with checksums,
budgets, the hub path (offline), resume after SIGKILL, bounded memory, damaged shards."""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from zoo.core.errors import ZooError
from zoo.gpt import datamodule as gdm
from zoo.gpt.datamodule import TextDataModule, TokenWindows

ROOT = Path(__file__).resolve().parents[2]
EOT = 256  # the byte tokenizer's separator


def make_dm(cache: Path, **kwargs) -> TextDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("prep_workers", 1)
    kwargs.setdefault("tokenizer", "byte")
    kwargs.setdefault("block_size", 8)
    return TextDataModule(cache_dir=cache, **kwargs)


def random_docs(n: int, mean_chars: int, seed: int) -> list[str]:
    """Letters and spaces, fast to make in bulk; distinct documents (each starts with its number)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(mean_chars // 2, mean_chars * 3 // 2, size=n)
    letters = rng.integers(97, 123, size=int(lengths.sum()), dtype=np.uint8)
    letters[rng.random(len(letters)) < 0.18] = 32
    text = letters.tobytes().decode()
    ends = np.cumsum(lengths)
    # Stripped, as the pipeline stores documents.
    return [
        (f"doc{seed}-{i} " + text[e - k : e]).strip()
        for i, (e, k) in enumerate(zip(ends, lengths, strict=True))
    ]


def write_parquet(path: Path, docs: list[str], row_group: int = 700) -> Path:
    table = pa.table({"id": [f"id-{path.stem}-{i}" for i in range(len(docs))], "text": docs})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def split_docs(dm: TextDataModule, split: str) -> list[str]:
    """The documents of a prepared split, decoded from its shards (byte tokenizer)."""
    m = json.loads((dm.folder / "manifest.json").read_text())
    tokens = np.concatenate([np.fromfile(dm.folder / f, dtype=m["dtype"]) for f in m["files"][split]])
    ends = np.flatnonzero(tokens == EOT)  # documents may run across shards: cut the joined split
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [bytes(tokens[a:b].astype(np.uint8)).decode() for a, b in zip(starts, ends, strict=True)]


def cache_bytes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_windows_are_found_without_an_index_of_window_starts(tmp_path):
    sizes = [50, 9, 1, 0, 33]
    files = []
    for k, n in enumerate(sizes):
        files.append(tmp_path / f"s{k}.bin")
        np.arange(k * 1000, k * 1000 + n, dtype=np.uint16).tofile(files[-1])
    for cover_all, stride in ((False, 3), (False, 8), (True, 8)):
        ds = TokenWindows(files, "uint16", 8, stride, cover_all)
        expected = []  # the explicit list of (shard, start) the windows must follow
        for k, n in enumerate(sizes):
            starts = range(0, max(n - 1, 0), 8) if cover_all else range(0, n - 9 + 1, stride)
            expected += [(k, s) for s in starts]
        assert len(ds) == len(expected) and not hasattr(ds, "starts")
        for i, (k, s) in enumerate(expected):
            x, y = ds[i]
            want = np.arange(k * 1000 + s, k * 1000 + min(s + 9, sizes[k]))
            assert x[: len(want) - 1].tolist() == want[:-1].tolist()
            assert y[: len(want) - 1].tolist() == want[1:].tolist()
            assert (y[len(want) - 1 :] == -100).all()
        with pytest.raises(IndexError):
            ds[len(ds)]


def test_folder_of_mixed_files_hash_split_is_stable_when_a_file_is_added(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = {name: random_docs(300, 120, seed) for seed, name in enumerate(["a", "b", "c", "d"])}
    write_parquet(corpus / "a.parquet", docs["a"], row_group=70)
    with gzip.open(corpus / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(docs["b"]))
    pd.DataFrame({"text": docs["c"], "n": range(300)}).to_csv(corpus / "c.csv", index=False)
    (corpus / "notes.md").write_text("not a corpus file: ignored in a folder")
    first = make_dm(tmp_path / "cache", source="file", path=str(corpus), column="text", val_fraction=0.2)
    first.prepare_data()
    before = {s: split_docs(first, s) for s in ("train", "val")}
    assert sorted(before["train"] + before["val"]) == sorted(docs["a"] + docs["b"] + docs["c"])
    assert before["train"][:5] == [d for d in docs["a"] if d in set(before["train"])][:5]  # reading order
    assert 0.12 < len(before["val"]) / 900 < 0.28

    pd.DataFrame({"text": docs["d"]}).to_parquet(corpus / "0-new.parquet")  # sorts first: read first
    second = make_dm(tmp_path / "cache", source="file", path=str(corpus), column="text", val_fraction=0.2)
    assert second.folder != first.folder  # a new file is a new corpus
    second.prepare_data()
    after = {s: split_docs(second, s) for s in ("train", "val")}
    for split in ("train", "val"):  # nobody moved: the old documents keep their split
        assert set(before[split]) <= set(after[split])
        assert set(after[split]) - set(before[split]) <= set(docs["d"])
    m = json.loads((second.folder / "manifest.json").read_text())
    val = after["val"]
    assert m["val_chars"] == sum(map(len, val)) + len(val)  # one per separator
    assert m["val_bytes"] == sum(len(d.encode()) for d in val) + len(val)


def test_shards_have_fixed_size_checksums_and_do_not_depend_on_the_worker_count(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", random_docs(4000, 100, 7))
    kwargs = {
        "source": "file",
        "path": str(path),
        "column": "text",
        "id_column": "id",
        "shard_tokens": 20_000,
    }
    one = make_dm(tmp_path / "one", prep_workers=1, **kwargs)
    two = make_dm(tmp_path / "two", prep_workers=2, **kwargs)
    one.prepare_data()
    two.prepare_data()
    assert cache_bytes(one.folder) == cache_bytes(two.folder)
    m = json.loads((one.folder / "manifest.json").read_text())
    assert set(cache_bytes(one.folder)) == {
        "manifest.json",
        "tokenizer.json",
        *m["files"]["train"],
        *m["files"]["val"],
    }
    for split in ("train", "val"):
        shards = m["shards"][split]
        assert all(s["tokens"] == 20_000 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 20_000
        for s in shards:
            data = (one.folder / s["file"]).read_bytes()
            assert len(data) == 2 * s["tokens"] and hashlib.sha256(data).hexdigest() == s["sha256"]
    assert len(m["shards"]["train"]) > 10
    one.setup("fit")
    assert len(one.train_set) == sum((s["tokens"] - 9) // 8 + 1 for s in m["shards"]["train"])


def test_budgets_stop_reading_at_a_document_boundary(tmp_path, monkeypatch):
    docs = random_docs(3000, 100, 3)
    files = [write_parquet(tmp_path / f"part{k}.parquet", docs[k * 1000 : (k + 1) * 1000]) for k in range(3)]
    opened = []
    real = gdm.sources.iter_table

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gdm.sources, "iter_table", spy)
    dm = make_dm(tmp_path / "cache", source="file", path=str(tmp_path / "part*.parquet"), column="text",
                 max_tokens=120_000)  # fmt: skip
    dm.prepare_data()
    m = json.loads((dm.folder / "manifest.json").read_text())
    total = sum(m["tokens"].values())
    kept = sum(m["documents"].values())
    assert total == sum(len(d.encode()) + 1 for d in docs[:kept]) <= 120_000
    assert total + len(docs[kept].encode()) + 1 > 120_000  # the next document would not fit
    assert opened == ["part0.parquet", "part1.parquet"] and files  # the third file is never read

    by_count = make_dm(
        tmp_path / "cache", source="file", path=str(files[0]), column="text", max_documents=333
    )
    by_count.prepare_data()
    assert sum(json.loads((by_count.folder / "manifest.json").read_text())["documents"].values()) == 333


def _hub_cache(root: Path, files: dict[str, list[str]]) -> None:
    """A pre-filled hub cache in huggingface_hub's layout: refs/main -> snapshots/<commit>/<file>."""
    repo = root / "datasets--someone--corpus"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, docs in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(target, docs)


def test_hub_dataset_offline_from_a_prefilled_cache(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    docs = random_docs(1500, 80, 11)
    _hub_cache(tmp_path / "cache" / "hf", {"sample/10BT/000.parquet": docs[:500],
               "sample/10BT/001.parquet": docs[500:1000], "sample/10BT/002.parquet": docs[1000:],
               "sample/100BT/000.parquet": random_docs(50, 80, 12)})  # fmt: skip
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: listing and download use the cache
    fetched = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda **kw: fetched.append(kw["filename"]) or real(**kw)
    )
    budget = sum(len(d) + 1 for d in docs[:700])
    dm = make_dm(tmp_path / "cache", source="hf", hf_repo="someone/corpus", hf_files="sample/10BT/*.parquet",
                 column="text", id_column="id", max_tokens=budget)  # fmt: skip
    dm.prepare_data()
    m = json.loads((dm.folder / "manifest.json").read_text())
    assert fetched == ["sample/10BT/000.parquet", "sample/10BT/001.parquet"]  # 002 is past the budget
    assert m["sources"] == [f"sample/10BT/00{k}.parquet" for k in range(3)]
    assert sum(m["documents"].values()) == 700 and sum(m["tokens"].values()) == budget
    snapshot = next((tmp_path / "cache" / "hf").glob("datasets--someone--corpus/snapshots/*"))
    assert (snapshot / "sample/10BT/000.parquet").is_file()  # in the cache before: never deleted

    with pytest.raises(ZooError, match=r"data.hf_repo=someone/nothing: cannot list .* not in the hub cache"):
        make_dm(tmp_path / "cache", source="hf", hf_repo="someone/nothing", column="text").prepare_data()
    with pytest.raises(
        ZooError, match=r"no parquet/jsonl/csv/txt files match data.hf_files=\['sample/1BT'\]"
    ):
        make_dm(tmp_path / "cache", source="hf", hf_repo="someone/corpus", hf_files="sample/1BT",
                column="text").prepare_data()  # fmt: skip


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_shard_is_a_one_line_error_naming_it(tmp_path, damage):
    path = write_parquet(tmp_path / "c.parquet", random_docs(600, 100, 5))
    dm = make_dm(tmp_path / "cache", source="file", path=str(path), column="text", shard_tokens=10_000)
    dm.prepare_data()
    shard = dm.folder / "train_002.bin"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[1234] ^= 0x01
        shard.write_bytes(bytes(data))
    else:
        shard.write_bytes(bytes(data[:-2]))
    again = make_dm(tmp_path / "cache", source="file", path=str(path), column="text", shard_tokens=10_000)
    with pytest.raises(ZooError) as err:
        again.setup("fit")
    message = str(err.value)
    assert str(shard) in message and "\n" not in message
    assert ("corrupted" if damage == "flip" else "truncated") in message


def _prep_then_maybe_die(kwargs: dict, mode: str) -> None:
    """The prep in a forked child: slowed down per piece (so the parent can kill it mid-way), or killing
    itself right after a shard is finished and before its progress record (the worst moment)."""
    if mode == "after-shard":
        finish, done = gdm.ShardWriter._finish, []

        def finish_then_die(self):
            finish(self)
            done.append(1)
            if len(done) == 5:
                os.kill(os.getpid(), signal.SIGKILL)

        gdm.ShardWriter._finish = finish_then_die
    else:
        write = gdm.ShardWriter.write

        def slow(self, tokens):
            time.sleep(0.15 / 2)  # each piece writes to both splits
            return write(self, tokens)

        gdm.ShardWriter.write = slow  # in the main process: the workers are fresh interpreters
    make_dm(**kwargs).prepare_data()


@pytest.mark.parametrize("mode", ["external", "after-shard"])
def test_prep_killed_with_sigkill_resumes_to_identical_bytes(tmp_path, mode):
    path = write_parquet(tmp_path / "c.parquet", random_docs(12_000, 60, 9), row_group=2000)
    kwargs = {
        "source": "file",
        "path": str(path),
        "column": "text",
        "shard_tokens": 30_000,
        "prep_workers": 2,
    }
    reference = make_dm(tmp_path / "reference", **kwargs)
    reference.prepare_data()

    child = mp.get_context("fork").Process(
        target=_prep_then_maybe_die, args=({"cache": tmp_path / "c", **kwargs}, mode)
    )
    child.start()
    victim = make_dm(tmp_path / "c", **kwargs)
    tmp = victim.folder.with_name(victim.folder.name + ".tmp")
    workers: set[int] = set()
    if mode == "external":
        deadline = time.time() + 120
        while time.time() < deadline:
            workers |= {p.pid for p in psutil.Process(child.pid).children()}
            with_progress = (tmp / "progress.json").is_file() and json.loads(
                (tmp / "progress.json").read_text()
            )
            if with_progress and len(with_progress["splits"]["train"]["shards"]) >= 3:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert not (victim.folder / "manifest.json").exists() and (tmp / "progress.json").is_file()
    time.sleep(0.3)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in workers)

    progress = json.loads((tmp / "progress.json").read_text())
    finished = progress["splits"]["train"]["shards"]
    assert finished and progress["pieces"] > 0
    stamps = {s["file"]: (tmp / s["file"]).stat().st_mtime_ns for s in finished}
    victim.prepare_data()  # resumes
    assert {f: (victim.folder / f).stat().st_mtime_ns for f in stamps} == stamps  # not written again
    assert cache_bytes(victim.folder) == cache_bytes(reference.folder)


def test_memory_stays_flat_while_preparing(tmp_path):
    """Bound: the prep's RSS grows by < 40 MB over a corpus of 48 MB of text (96 MB of tokens in 2 MB
    shards): what is held is a few pieces (1024 documents), not the corpus; the old in-memory pipeline
    held all the text and a Python int per token (> 1 GB here)."""
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for part in range(12):  # made a row group at a time, so the heap is not already grown by the corpus
            writer.write_table(pa.table({"text": random_docs(4000, 1000, part)}))
    dm = make_dm(tmp_path / "cache", source="file", path=str(path), column="text", shard_tokens=1 << 20)
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    with contextlib.suppress(OSError, AttributeError):  # glibc: hand freed heap back, or the prep reuses it
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = process.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        dm.prepare_data()
    finally:
        done.set()
        sampler.join()
    m = json.loads((dm.folder / "manifest.json").read_text())
    assert sum(m["tokens"].values()) > 48_000_000
    assert (peak[0] - base) / 2**20 < 40, f"RSS grew by {(peak[0] - base) / 2**20:.0f} MB"


def test_every_gpt_data_config_takes_the_same_keys():
    import inspect

    folder = ROOT / "conf" / "data" / "gpt"
    base = set(yaml.safe_load((folder / "_base.yaml").read_text())) - {"_target_"}
    params = set(inspect.signature(TextDataModule.__init__).parameters) | {
        "batch_size", "num_workers", "pin_memory", "persistent_workers", "seed", "cache_dir"}  # fmt: skip
    assert (
        base <= params
        and {"prep_workers", "max_tokens", "shard_tokens", "tokenizer_name", "hf_files"} <= base
    )
    for path in folder.glob("*.yaml"):
        keys = set(yaml.safe_load(path.read_text())) - {"defaults", "_target_"}
        assert keys <= base, f"{path.name}: keys not in _base.yaml: {keys - base}"
    recipe = yaml.safe_load((ROOT / "conf" / "experiment" / "gpt_300m.yaml").read_text())
    assert set(recipe["data"]) <= base
