"""Text -> tokenizer -> token shards -> (x, y) windows, in the zoo DataModule shape.

`prepare_data` streams the source (`zoo.gpt.sources`): pieces of documents in reading order are tokenized
in `prep_workers` processes (results taken back in order, a bounded number in flight, so memory stays
flat) and appended to ``train_000.bin``, ``val_000.bin``... (flat uint16/uint32 token arrays) of
``shard_tokens`` tokens each, written as they fill. ``progress.json`` records after every piece where the
reading stands and how far each shard got, so a prep killed at any point resumes there and ends with the
same bytes. ``manifest.json`` (every shard with its token count and sha256) is written last: a folder
without a manifest is unfinished. Validation documents are picked by a seeded hash of each document (or
its id), not by position, so adding files never reshuffles the split.

Training windows are ``block_size + 1`` tokens every ``train_stride`` tokens (stride 1 = every offset);
validation windows tile the split without overlap and the last one is padded, so every validation token
is scored exactly once (needed for loss per character). Windows are located from per-shard counts; no
index of window starts is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.core.datamodule import ZooDataModule, fingerprint
from zoo.core.errors import ZooError
from zoo.gpt import sources
from zoo.gpt.prep import SPLITS, assign_splits, ordered_encoder
from zoo.gpt.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, tokenizer_from_json

log = logging.getLogger(__name__)

IGNORE = -100
PROGRESS = "progress.json"
SOURCES = "sources.json"  # the files being read, fixed at the start (a hub listing may change)
PREP_VERSION = 1


class TokenWindows(Dataset):
    """Fixed-length windows over one or more token shards; windows never cross a shard boundary.

    Window ``i`` is found from the number of windows in each shard (one integer per shard), so the
    dataset costs nothing per window even over billions of tokens.
    """

    def __init__(
        self,
        files: list[Path],
        dtype: str,
        block_size: int,
        stride: int,
        cover_all: bool,
        tokens: list[int] | None = None,
    ):
        self.files, self.dtype, self.block_size = [str(f) for f in files], dtype, block_size
        self._arrays: list[np.ndarray] | None = None  # opened lazily: memmaps must not be pickled to workers
        self.step = block_size if cover_all else stride
        span = block_size + 1
        counts = []
        for k, f in enumerate(self.files):
            n = tokens[k] if tokens is not None else os.path.getsize(f) // np.dtype(dtype).itemsize
            if cover_all:  # tile all n-1 targets; the last window may be short
                counts.append(-(-(n - 1) // block_size) if n > 1 else 0)
            else:
                counts.append((n - span) // stride + 1 if n >= span else 0)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)} windows)")
        if self._arrays is None:
            self._arrays = [
                np.memmap(f, dtype=self.dtype, mode="r") if os.path.getsize(f) else np.zeros(0, self.dtype)
                for f in self.files
            ]
        shard = int(np.searchsorted(self.offsets, i, side="right")) - 1
        start = (i - int(self.offsets[shard])) * self.step
        chunk = torch.from_numpy(self._arrays[shard][start : start + self.block_size + 1].astype(np.int64))
        x = torch.zeros(self.block_size, dtype=torch.long)
        y = torch.full((self.block_size,), IGNORE, dtype=torch.long)
        x[: len(chunk) - 1] = chunk[:-1]
        y[: len(chunk) - 1] = chunk[1:]
        return x, y


# -- writing shards (in the main process) --------------------------------------------------------------


class StalePrep(Exception):
    """An unfinished prep folder that cannot be resumed (it is started again from scratch)."""


class ShardWriter:
    """Appends tokens of one split to ``<split>_NNN.bin`` files of exactly `shard_tokens` tokens (the last
    one shorter), hashing them as they are written.

    `state` ({"shards": finished shards, "open": tokens of the open one}) is what `progress.json` recorded;
    a writer built from it after an interruption drops what was written after that record: shards past the
    open one are deleted and the open one is cut back to its recorded length (and its hash recomputed).
    """

    def __init__(self, out: Path, split: str, dtype: str, shard_tokens: int, state: dict[str, Any]):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, np.dtype(dtype), shard_tokens
        self.shards: list[dict[str, Any]] = [dict(s) for s in state["shards"]]
        self.n = int(state["open"])
        self.file = None
        self.hash = hashlib.sha256()
        index = len(self.shards)
        for stray in out.glob(f"{split}_*.bin"):  # begun after the record: written again
            number = int(stray.stem.rsplit("_", 1)[1])
            if number > index or (number == index and not self.n):
                stray.unlink()
        if self.n:
            path = self.path(index)
            if not path.is_file() or path.stat().st_size < self.n * self.dtype.itemsize:
                raise StalePrep(f"{path} is shorter than {PROGRESS} says")
            self.file = open(path, "r+b", buffering=0)  # noqa: SIM115 (kept open across writes)
            self.file.truncate(self.n * self.dtype.itemsize)
            while block := self.file.read(16 << 20):
                self.hash.update(block)

    def path(self, index: int) -> Path:
        return self.out / f"{self.split}_{index:03d}.bin"

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.file is None:
                self.file = open(self.path(len(self.shards)), "wb", buffering=0)  # noqa: SIM115
                self.hash = hashlib.sha256()
            part = tokens[: self.shard_tokens - self.n]
            data = memoryview(np.ascontiguousarray(part, dtype=self.dtype)).cast("B")
            self.file.write(data)
            self.hash.update(data)
            self.n += len(part)
            tokens = tokens[len(part) :]
            if self.n == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        self.file.close()
        self.file = None
        name = self.path(len(self.shards)).name
        self.shards.append({"file": name, "tokens": self.n, "sha256": self.hash.hexdigest()})
        log.info("data: %s written (%d tokens)", name, self.n)
        self.n = 0

    def close(self) -> None:
        """Finish the open shard (the end of the split)."""
        if self.file is not None and self.n:
            self._finish()
        elif self.file is not None:
            self.file.close()
            self.file = None

    def state(self) -> dict[str, Any]:
        return {"shards": self.shards, "open": self.n}


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=indent))
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_VERIFIED: set[tuple[str, int, int, str]] = set()  # shards already checked by this process


def _budget(
    lengths: np.ndarray, docs_done: int, tokens_done: int, max_docs: int | None, max_tokens: int | None
) -> tuple[int, bool]:
    """How many of a piece's documents (with these token counts) fit `max_docs` / `max_tokens`, and
    whether the budget is then used up (reading stops: later pieces are not read or downloaded)."""
    keep, stop = len(lengths), False
    if max_docs is not None:
        keep = max(0, min(keep, max_docs - docs_done))
        stop = docs_done + keep >= max_docs
    if max_tokens is not None:
        total = np.cumsum(lengths[:keep])
        fits = int(np.searchsorted(total, max_tokens - tokens_done, side="right"))
        used = tokens_done + (int(total[fits - 1]) if fits else 0)
        stop = stop or fits < keep or used >= max_tokens
        keep = fits
    return keep, stop


class TextDataModule(ZooDataModule):
    """Language-model data for the GPT family.

    Args (besides the shared loader settings of `ZooDataModule`):
        source: ``stdlib`` | ``file`` | ``hf`` | ``url`` | ``synthetic``. ``hf`` and ``url`` use
            ``path`` instead of downloading when it is set (offline use, mirrors).
        path: a local file, folder or glob of .parquet / .jsonl(.gz) / .csv(.gz) / .json (one document per
            row of ``column``) or .txt files (one document each); a single .txt file is one document
            split by characters.
        url / hf_repo / hf_revision: where ``url``/``hf`` sources download from.
        hf_files: fnmatch pattern(s) or folder(s) of the repo's files to read (e.g. ``sample/10BT``).
        keep_downloads: keep hub files after tokenizing them (default: each is deleted once read).
        column / id_column: text column of tables, and an optional id column hashed for the split.
        max_documents / max_tokens: stop reading after this many documents / before the document that
            would take the prepared tokens (both splits, separators included) past the budget.
        shuffle_seed: gather the documents in memory and shuffle them with
            ``numpy.random.default_rng(seed).permutation`` first (small corpora).
        max_bytes: how much of the standard library ``stdlib`` reads.
        val_fraction / val_split / split_seed: ``hash`` (default) puts a document in validation when a
            hash of it keyed by ``split_seed`` falls below ``val_fraction``; ``last`` takes the last
            fraction of the (gathered, maybe shuffled) documents, as Mainrun does. One split text: the last
            fraction of its characters.
        tokenizer: ``byte`` | ``char`` | ``bpe`` (byte-level BPE trained on the training split) |
            ``pretrained`` (``tokenizer_name``: a HF hub repo, a local tokenizer.json or a folder holding one).
        vocab_size: BPE vocabulary size.
        block_size: tokens per training window (the model's context).
        train_stride: offset between training windows (default ``block_size``: non-overlapping).
        shard_tokens: tokens per shard file.
        prep_workers: tokenizing processes (``auto``: one per core); the shards do not depend on it.
        verify_shards: check every shard's sha256 at setup (sizes are always checked).
        synthetic: settings of the Markov corpus (n_tokens, alphabet, order, concentration, seed).
    """

    family = "gpt"
    resumable_cache = True  # an interrupted build_cache continues from progress.json

    def __init__(
        self,
        source: str = "stdlib",
        path: str | None = None,
        url: str | None = None,
        hf_repo: str | None = None,
        hf_revision: str | None = None,
        hf_files: str | list[str] | None = None,
        keep_downloads: bool = False,
        column: str | None = None,
        id_column: str | None = None,
        max_documents: int | None = None,
        max_tokens: int | None = None,
        shuffle_seed: int | None = None,
        max_bytes: int = 4_000_000,
        val_fraction: float = 0.1,
        val_split: str = "hash",
        split_seed: int = 0,
        tokenizer: str = "byte",
        vocab_size: int | None = None,
        tokenizer_name: str | None = None,
        block_size: int = 128,
        train_stride: int | None = None,
        shard_tokens: int = 2**27,
        prep_workers: int | str = "auto",
        verify_shards: bool = True,
        synthetic: dict[str, Any] | None = None,
        name: str = "text",
        **loader_kwargs: Any,
    ):
        super().__init__(**loader_kwargs)
        if source not in ("stdlib", "file", "hf", "url", "synthetic"):
            raise ZooError(f"data.source={source}: expected one of stdlib, file, hf, url, synthetic")
        if tokenizer not in ("byte", "char", "bpe", "pretrained"):
            raise ZooError(f"data.tokenizer={tokenizer}: expected one of byte, char, bpe, pretrained")
        if not 0.0 < val_fraction < 1.0:
            raise ZooError(f"data.val_fraction={val_fraction} must be between 0 and 1")
        if val_split not in ("hash", "last"):
            raise ZooError(f"data.val_split={val_split}: expected hash or last")
        if block_size <= 0 or (train_stride is not None and train_stride <= 0):
            raise ZooError(
                f"data.block_size={block_size} and data.train_stride={train_stride} must be positive"
            )
        for key, value in (("shard_tokens", shard_tokens), ("max_tokens", max_tokens),
                           ("max_documents", max_documents)):  # fmt: skip
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ZooError(f"data.{key}={value} must be a positive integer")
        if prep_workers != "auto" and (not isinstance(prep_workers, int) or prep_workers <= 0):
            raise ZooError(f"data.prep_workers must be 'auto' or a positive integer, got {prep_workers!r}")
        if source == "file" and not path:
            raise ZooError("data.source=file needs data.path")
        if isinstance(hf_files, str):
            hf_files = [hf_files]
        self.settings = {
            "source": source, "path": path, "url": url, "hf_repo": hf_repo, "hf_revision": hf_revision,
            "hf_files": [str(p) for p in hf_files] if hf_files else None, "column": column,
            "id_column": id_column, "max_documents": max_documents, "max_tokens": max_tokens,
            "shuffle_seed": shuffle_seed, "max_bytes": max_bytes, "val_fraction": val_fraction,
            "val_split": val_split, "split_seed": split_seed, "tokenizer": tokenizer,
            "vocab_size": vocab_size, "tokenizer_name": tokenizer_name, "shard_tokens": shard_tokens,
            "synthetic": dict(synthetic or {}), "prep_version": PREP_VERSION,
        }  # fmt: skip
        if path:  # a changed or added file must not reuse a stale cache
            self.settings["path_stat"] = sources.files_digest(sources.resolve_files(path)[0])
        tok_path = Path(tokenizer_name).expanduser() if tokenizer_name else None
        if tok_path is not None and tok_path.is_dir():  # a HF folder (model.init_from's)
            tok_path = tok_path / "tokenizer.json"
        if tok_path is not None and tok_path.is_file():
            self.settings["tokenizer_stat"] = sources.files_digest([tok_path])
        self.name = name
        self.block_size = int(block_size)
        self.train_stride = int(train_stride or block_size)
        self.prep_workers = prep_workers
        self.keep_downloads = bool(keep_downloads)
        self.verify_shards = bool(verify_shards)
        self.folder = self.cache_dir / "gpt" / f"{name}-{fingerprint(self.settings)}"
        self.manifest: dict[str, Any] = {}
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    # -- sources -------------------------------------------------------------------------------------

    def _source(self, known_files: list[str] | None = None) -> tuple[sources.Source, bool, dict[str, Any]]:
        """The documents to prepare, whether they are one text split by characters, and manifest extras."""
        s = self.settings
        if s["source"] == "synthetic":
            syn = {"n_tokens": 500_000, "alphabet": "abcdefghijklmnopqrstuvwxyz .,;!?", "order": 2,
                   "concentration": 0.2, "seed": 0} | s["synthetic"]  # fmt: skip
            text, nll = sources.markov_corpus(**syn)
            cut = int(len(text) * (1 - s["val_fraction"]))
            # A val window's first target is predicted from one symbol, not `order`: the floor below is the
            # mean true NLL over the targets, the best any model that sees the same context can do.
            extra = {"entropy_floor_nats": float(nll[cut + syn["order"] :].mean()),
                     "entropy_rate_nats": float(nll[syn["order"] :].mean())}  # fmt: skip
            return sources.ListSource([text[:cut], text[cut:]], [0, 1], clean=False), True, extra
        if s["source"] == "stdlib":
            source: sources.Source = sources.ListSource(sources.stdlib_documents(s["max_bytes"]))
        else:
            path = s["path"]
            if not path and s["source"] == "url":
                if not s["url"]:
                    raise ZooError("data.source=url needs data.url (or data.path for a local copy)")
                path = str(sources.download(s["url"], self.cache_dir))
            if path:
                files, single = sources.resolve_files(path)
                if single and sources.file_kind(files[0]) in ("txt", None):
                    text = sources.single_text(files[0])
                    cut = int(len(text) * (1 - s["val_fraction"]))
                    return sources.ListSource([text[:cut], text[cut:]], [0, 1], clean=False), True, {}
                source = sources.FileSource(files, s["column"], s["id_column"])
            elif s["source"] == "hf":
                if not s["hf_repo"] or not s["column"]:
                    raise ZooError(
                        "data.source=hf needs data.hf_repo and data.column (or data.path for local files)"
                    )
                source = sources.HubSource(
                    s["hf_repo"], s["column"], self.cache_dir / "hf", s["hf_revision"], s["hf_files"],
                    s["id_column"], self.keep_downloads, files=known_files,
                )  # fmt: skip
            else:
                raise ZooError(f"data.source={s['source']} needs data.path")
        if s["shuffle_seed"] is not None or s["val_split"] == "last":
            source = self._gather(source)
        return source, False, {}

    def _gather(self, source: sources.Source) -> sources.ListSource:
        """All documents in memory, shuffled and/or split by position: only for small corpora."""
        s = self.settings
        docs = [
            t for p in source.pieces() for t, _, _ in assign_splits(p, s["split_seed"], s["val_fraction"])
        ]
        if s["shuffle_seed"] is not None:
            order = np.random.default_rng(s["shuffle_seed"]).permutation(len(docs))
            docs = [docs[i] for i in order]
        if s["max_documents"]:
            docs = docs[: s["max_documents"]]
        if s["val_split"] != "last":
            return sources.ListSource(docs, clean=False)
        n_val = max(1, int(round(len(docs) * s["val_fraction"])))
        if n_val >= len(docs):
            raise ZooError(
                f"{len(docs)} documents are too few to hold out data.val_fraction={s['val_fraction']}"
            )
        return sources.ListSource(docs, [0] * (len(docs) - n_val) + [1] * n_val, clean=False)

    def _train_texts(self, source: sources.Source) -> Iterator[str]:
        """The training documents in order (for tokenizers trained on them)."""
        s, seen = self.settings, 0
        for piece in source.pieces():
            for text, _, split in assign_splits(piece, s["split_seed"], s["val_fraction"]):
                if s["max_documents"] and seen >= s["max_documents"]:
                    return
                seen += 1
                if split == 0:
                    yield text

    def _tokenizer(self, source: sources.Source, single: bool) -> Tokenizer:
        s = self.settings
        if s["tokenizer"] == "byte":
            return ByteTokenizer()
        if s["tokenizer"] == "pretrained":
            if not s["tokenizer_name"]:
                raise ZooError(
                    "data.tokenizer=pretrained needs data.tokenizer_name (HF repo or tokenizer.json path)"
                )
            return HFTokenizer.pretrained(
                str(Path(s["tokenizer_name"]).expanduser()), str(self.cache_dir / "hf")
            )
        if s["tokenizer"] == "char":
            return CharTokenizer.train(self._train_texts(source), with_eot=not single)
        if not s["vocab_size"]:
            raise ZooError("data.tokenizer=bpe needs data.vocab_size")
        return HFTokenizer.train_bpe(self._train_texts(source), s["vocab_size"])

    def prep_worker_count(self) -> int:
        if self.prep_workers != "auto":
            return int(self.prep_workers)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    # -- prepare ---------------------------------------------------------------------------------------

    def _fresh_state(self, out: Path) -> dict[str, Any] | None:
        """The progress of an interrupted prep of this folder, if there is one to resume."""
        path = out / PROGRESS
        if not all((out / f).is_file() for f in (PROGRESS, SOURCES, "tokenizer.json")):
            return None
        try:
            state = json.loads(path.read_text())
        except ValueError:
            return None
        if state.get("version") != PREP_VERSION or state.get("fingerprint") != fingerprint(self.settings):
            return None
        return state

    def build_cache(self, out: Path) -> None:
        state = self._fresh_state(out)
        try:
            self._build(out, state)
        except StalePrep as err:
            log.warning("data (%s): cannot resume the interrupted prep (%s): starting again", self.name, err)
            self._build(out, None)

    def _build(self, out: Path, state: dict[str, Any] | None) -> None:
        s = self.settings
        started = time.perf_counter()
        if state is None:
            for child in out.iterdir():  # litter of an attempt that cannot be resumed
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            source, single, extra = self._source()
            tok = self._tokenizer(source, single)
            state = {
                "version": PREP_VERSION, "fingerprint": fingerprint(self.settings),
                "dtype": "uint16" if tok.vocab_size <= 2**16 else "uint32",
                "eot": None if single else tok.eot_id, "after": None,
                "pieces": 0, "done": False, "splits": {k: {"shards": [], "open": 0} for k in SPLITS},
                "documents": {k: 0 for k in SPLITS}, "val_chars": 0, "val_bytes": 0, "extra": extra,
            }  # fmt: skip
            _write_json(out / SOURCES, source.files())
            (out / "tokenizer.json").write_text(tok.to_json())
            _write_json(out / PROGRESS, state)
        else:
            source, _, _ = self._source(known_files=json.loads((out / SOURCES).read_text()))
            tok = tokenizer_from_json((out / "tokenizer.json").read_text())
            log.info(
                "data (%s): resuming an interrupted prep after %d pieces (%s shards done)",
                self.name, state["pieces"],
                "/".join(str(len(state["splits"][k]["shards"])) for k in SPLITS),
            )  # fmt: skip
        writers = {
            k: ShardWriter(out, k, state["dtype"], s["shard_tokens"], state["splits"][k]) for k in SPLITS
        }
        if not state["done"]:
            self._stream(out, state, source, tok, writers)
        for k in SPLITS:
            writers[k].close()
            state["splits"][k] = writers[k].state()
        _write_json(out / PROGRESS, state)
        self._write_manifest(out, state, tok)
        elapsed = time.perf_counter() - started
        total = sum(sh["tokens"] for k in SPLITS for sh in state["splits"][k]["shards"])
        log.info("data (%s): %d tokens prepared in %.1f s", self.name, total, elapsed)

    def _stream(
        self,
        out: Path,
        state: dict[str, Any],
        source: sources.Source,
        tok: Tokenizer,
        writers: dict[str, ShardWriter],
    ) -> None:
        """Tokenize the pieces after ``state["after"]`` and append them to the shards, recording the
        progress after each piece (its tokens are in the files before the record says so)."""
        s = self.settings
        max_docs, max_tokens = s["max_documents"], s["max_tokens"]
        after = tuple(state["after"]) if state["after"] is not None else None
        pieces = source.pieces(after)
        encoder = ordered_encoder(
            self.prep_worker_count(), tok, state["eot"], state["dtype"], s["split_seed"], s["val_fraction"]
        )
        with contextlib.closing(pieces), encoder as encode:
            results = encode(pieces)
            with contextlib.closing(results):
                for key, res in results:
                    docs_done = sum(state["documents"].values())
                    tokens_done = sum(w.n + sum(sh["tokens"] for sh in w.shards) for w in writers.values())
                    keep, stop = _budget(res["lengths"], docs_done, tokens_done, max_docs, max_tokens)
                    split = res["split"][:keep]
                    lengths = res["lengths"][:keep]
                    for k, name in enumerate(SPLITS):
                        writers[name].write(res["tokens"][k][: int(lengths[split == k].sum())])
                        state["documents"][name] += int((split == k).sum())
                    val = split == 1
                    n_sep = int(val.sum()) if state["eot"] is not None else 0
                    # Each document separator counts as one character (as a newline would).
                    state["val_chars"] += int(res["chars"][:keep][val].sum()) + n_sep
                    state["val_bytes"] += int(res["bytes"][:keep][val].sum()) + n_sep
                    state["after"], state["pieces"] = list(key), state["pieces"] + 1
                    state["splits"] = {k: w.state() for k, w in writers.items()}
                    state["done"] = stop
                    _write_json(out / PROGRESS, state)
                    if stop:
                        break
        state["done"] = True

    def _write_manifest(self, out: Path, state: dict[str, Any], tok: Tokenizer) -> None:
        shards = {k: state["splits"][k]["shards"] for k in SPLITS}
        docs = state["documents"]
        if not docs["train"] and not docs["val"]:
            raise ZooError(
                f"data ({self.name}): no non-empty documents to train on (data.column={self.settings['column']})"
            )
        for k, other in (("train", "val"), ("val", "train")):
            if not docs[k] or not shards[k]:
                raise ZooError(
                    f"data ({self.name}): the {k} split is empty ({docs[other]} {other} documents, "
                    f"data.val_fraction={self.settings['val_fraction']}): use more documents or change "
                    "data.val_fraction"
                )
        manifest = {
            "name": self.name,
            "settings": self.settings,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": state["dtype"],
            "files": {k: [sh["file"] for sh in shards[k]] for k in SPLITS},
            "tokens": {k: sum(sh["tokens"] for sh in shards[k]) for k in SPLITS},
            "shards": shards,
            "documents": docs,
            "val_chars": state["val_chars"],
            "val_bytes": state["val_bytes"],
            "sources": json.loads((out / SOURCES).read_text()),
            "fingerprint": fingerprint(self.settings),
            **state["extra"],
        }
        (out / PROGRESS).unlink()
        (out / SOURCES).unlink()
        _write_json(out / "manifest.json", manifest, indent=2)

    # -- setup -------------------------------------------------------------------------------------
    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest:
            self.prepare_data()
            self.manifest = json.loads((self.folder / "manifest.json").read_text())
        return self.manifest

    def check_shards(self, manifest: dict[str, Any]) -> None:
        """Every shard has the size the manifest gives it, and (``verify_shards``) its sha256: a damaged
        cache is a one-line error naming the file, never windows of garbage."""
        itemsize = np.dtype(manifest["dtype"]).itemsize
        todo = []
        redo = f"delete {self.folder} to prepare the data again"
        for k in SPLITS:
            for shard in manifest["shards"][k]:
                path = self.folder / shard["file"]
                if not path.is_file():
                    raise ZooError(f"data ({self.name}): shard {path} is missing: {redo}")
                size, want = path.stat().st_size, shard["tokens"] * itemsize
                if size != want:
                    raise ZooError(
                        f"data ({self.name}): shard {path} is truncated or damaged ({size} bytes, the "
                        f"manifest says {want}): {redo}"
                    )
                stamp = (str(path), size, path.stat().st_mtime_ns, shard["sha256"])
                if self.verify_shards and stamp not in _VERIFIED:
                    todo.append((path, shard["sha256"], stamp))
        if not todo:
            return
        threads = min(8, len(todo), os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:  # hashlib releases the GIL
            digests = list(pool.map(lambda t: _sha256(t[0]), todo))
        for (path, want, stamp), got in zip(todo, digests, strict=True):
            if got != want:
                raise ZooError(
                    f"data ({self.name}): shard {path} is corrupted (sha256 {got[:16]}..., the manifest "
                    f"says {want[:16]}...): {redo}"
                )
            _VERIFIED.add(stamp)

    def setup(self, stage: str | None = None) -> None:
        m = self._load_manifest()
        self.check_shards(m)
        paths = {k: [self.folder / f for f in m["files"][k]] for k in SPLITS}
        counts = {k: [sh["tokens"] for sh in m["shards"][k]] for k in SPLITS}
        self.train_set = TokenWindows(
            paths["train"], m["dtype"], self.block_size, self.train_stride, False, counts["train"]
        )
        self.val_set = TokenWindows(
            paths["val"], m["dtype"], self.block_size, self.block_size, True, counts["val"]
        )
        if len(self.train_set) == 0:
            raise ZooError(
                f"data ({self.name}): {m['tokens']['train']} training tokens are fewer than data.block_size+1="
                f"{self.block_size + 1}: lower data.block_size or use more text"
            )

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_json((self.folder / "tokenizer.json").read_text())

    def model_kwargs(self) -> dict[str, Any]:
        m = self._load_manifest()
        return {
            "vocab_size": m["vocab_size"],
            "block_size": self.block_size,
            "tokenizer_json": self.tokenizer().to_json(),
        }

    def fingerprint(self) -> str:
        return fingerprint(self.settings)

    @property
    def val_stats(self) -> dict[str, int]:
        """Totals behind loss-per-character and bits-per-byte: targets, characters and bytes of val."""
        m = self._load_manifest()
        return {
            "targets": m["tokens"]["val"] - len(m["files"]["val"]),
            "chars": m["val_chars"],
            "bytes": m["val_bytes"],
        }

    def train_dataloader(self):
        return self.make_loader(self.train_set, train=True)

    def val_dataloader(self):
        return self.make_loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.val_dataloader()
