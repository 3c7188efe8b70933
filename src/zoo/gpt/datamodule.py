"""Text -> tokenizer -> memory-mapped token shards -> (x, y) windows, in the zoo DataModule shape.

`prepare_data` writes, once per distinct setting, a folder under ``cache_dir/gpt/`` holding
``tokenizer.json``, ``train_000.bin``... and ``val_000.bin``... (flat uint16/uint32 token arrays) and
``manifest.json``, written last: a folder without a manifest is unfinished and is rebuilt. Training
windows are ``block_size + 1`` tokens every ``train_stride`` tokens (stride 1 = every offset, like random
sampling); validation windows tile the split without overlap and the last one is padded, so every
validation token is scored exactly once (needed for loss per character).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.core.datamodule import ZooDataModule, fingerprint
from zoo.core.errors import ZooError
from zoo.gpt import sources
from zoo.gpt.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, tokenizer_from_json

IGNORE = -100


class TokenWindows(Dataset):
    """Fixed-length windows over one or more token shards; windows never cross a shard boundary."""

    def __init__(self, files: list[Path], dtype: str, block_size: int, stride: int, cover_all: bool):
        self.files, self.dtype, self.block_size = [str(f) for f in files], dtype, block_size
        self._arrays: list[np.ndarray] | None = None  # opened lazily: memmaps must not be pickled to workers
        span = block_size + 1
        starts = []
        for shard, f in enumerate(self.files):
            n = os.path.getsize(f) // np.dtype(dtype).itemsize
            if cover_all:  # tile all n-1 targets; the last window may be short
                offsets = range(0, max(n - 1, 0), block_size)
            else:
                offsets = range(0, n - span + 1, stride) if n >= span else range(0)
            starts.extend((shard, o) for o in offsets)
        self.starts = np.asarray(starts, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = [np.memmap(f, dtype=self.dtype, mode="r") for f in self.files]
        shard, start = self.starts[i]
        chunk = torch.from_numpy(self._arrays[shard][start : start + self.block_size + 1].astype(np.int64))
        x = torch.zeros(self.block_size, dtype=torch.long)
        y = torch.full((self.block_size,), IGNORE, dtype=torch.long)
        x[: len(chunk) - 1] = chunk[:-1]
        y[: len(chunk) - 1] = chunk[1:]
        return x, y


class TextDataModule(ZooDataModule):
    """Language-model data for the GPT family.

    Args (besides the shared loader settings of `ZooDataModule`):
        source: ``stdlib`` | ``file`` | ``hf`` | ``url`` | ``synthetic``. ``hf`` and ``url`` use
            ``path`` instead of downloading when it is set (offline use, mirrors).
        path: local .txt (one document) or .csv/.parquet/.jsonl (one document per row of ``column``).
        url / hf_repo / hf_revision: where ``url``/``hf`` sources download from (cached).
        column: text column of tables.
        max_documents: keep the first N documents (after the optional shuffle).
        shuffle_seed: shuffle documents with ``numpy.random.default_rng(seed).permutation`` first.
        max_bytes: how much of the standard library ``stdlib`` reads.
        val_fraction: the last fraction (of characters for one document, else of documents) is validation.
        tokenizer: ``byte`` | ``char`` | ``bpe`` (byte-level BPE trained on the training split) |
            ``pretrained`` (``tokenizer_name``: a HF hub repo or a tokenizer.json path).
        vocab_size: BPE vocabulary size.
        block_size: tokens per training window (the model's context).
        train_stride: offset between training windows (default ``block_size``: non-overlapping).
        shard_tokens: tokens per shard file.
        synthetic: settings of the Markov corpus (n_tokens, alphabet, order, concentration, seed).
    """

    family = "gpt"

    def __init__(
        self,
        source: str = "stdlib",
        path: str | None = None,
        url: str | None = None,
        hf_repo: str | None = None,
        hf_revision: str | None = None,
        column: str | None = None,
        max_documents: int | None = None,
        shuffle_seed: int | None = None,
        max_bytes: int = 4_000_000,
        val_fraction: float = 0.1,
        tokenizer: str = "byte",
        vocab_size: int | None = None,
        tokenizer_name: str | None = None,
        block_size: int = 128,
        train_stride: int | None = None,
        shard_tokens: int = 2**27,
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
        if block_size <= 0 or (train_stride is not None and train_stride <= 0):
            raise ZooError(
                f"data.block_size={block_size} and data.train_stride={train_stride} must be positive"
            )
        if source == "file" and not path:
            raise ZooError("data.source=file needs data.path")
        self.settings = {
            "source": source, "path": path, "url": url, "hf_repo": hf_repo, "hf_revision": hf_revision,
            "column": column, "max_documents": max_documents, "shuffle_seed": shuffle_seed,
            "max_bytes": max_bytes, "val_fraction": val_fraction, "tokenizer": tokenizer,
            "vocab_size": vocab_size, "tokenizer_name": tokenizer_name, "shard_tokens": shard_tokens,
            "synthetic": dict(synthetic or {}),
        }  # fmt: skip
        if path:  # a changed file must not reuse a stale cache
            p = Path(path).expanduser()
            if not p.is_file():
                raise ZooError(f"data.path={p}: no such file")
            self.settings["path_stat"] = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
        self.name = name
        self.block_size = int(block_size)
        self.train_stride = int(train_stride or block_size)
        self.folder = self.cache_dir / "gpt" / f"{name}-{fingerprint(self.settings)}"
        self.manifest: dict[str, Any] = {}
        self.train_set: TokenWindows | None = None
        self.val_set: TokenWindows | None = None

    # -- prepare -----------------------------------------------------------------------------------

    def _documents(self) -> list[str]:
        s = self.settings
        if s["source"] == "stdlib":
            return sources.stdlib_documents(s["max_bytes"])
        if s["path"]:
            return sources.read_documents(s["path"], s["column"])
        if s["source"] == "url":
            if not s["url"]:
                raise ZooError("data.source=url needs data.url (or data.path for a local copy)")
            return sources.read_documents(sources.download(s["url"], self.cache_dir), s["column"])
        if s["source"] == "hf":
            if not s["hf_repo"] or not s["column"]:
                raise ZooError(
                    "data.source=hf needs data.hf_repo and data.column (or data.path for a local copy)"
                )
            return sources.hf_documents(s["hf_repo"], s["column"], self.cache_dir, s["hf_revision"])
        raise ZooError(f"data.source={s['source']} needs data.path")

    def _split(self) -> tuple[list[str], list[str], dict[str, Any]]:
        s = self.settings
        extra: dict[str, Any] = {}
        if s["source"] == "synthetic":
            syn = {"n_tokens": 500_000, "alphabet": "abcdefghijklmnopqrstuvwxyz .,;!?", "order": 2,
                   "concentration": 0.2, "seed": 0} | s["synthetic"]  # fmt: skip
            text, nll = sources.markov_corpus(**syn)
            cut = int(len(text) * (1 - s["val_fraction"]))
            # A val window's first target is predicted from one symbol, not `order`: the floor below is the
            # mean true NLL over the targets, the best any model that sees the same context can do.
            extra["entropy_floor_nats"] = float(nll[cut + syn["order"] :].mean())
            extra["entropy_rate_nats"] = float(nll[syn["order"] :].mean())
            return [text[:cut]], [text[cut:]], extra
        docs = self._documents()
        if s["shuffle_seed"] is not None:
            order = np.random.default_rng(s["shuffle_seed"]).permutation(len(docs))
            docs = [docs[i] for i in order]
        if s["max_documents"]:
            docs = docs[: s["max_documents"]]
        if len(docs) == 1:
            text = docs[0]
            cut = int(len(text) * (1 - s["val_fraction"]))
            return [text[:cut]], [text[cut:]], extra
        n_val = max(1, int(round(len(docs) * s["val_fraction"])))
        if n_val >= len(docs):
            raise ZooError(
                f"{len(docs)} documents are too few to hold out data.val_fraction={s['val_fraction']}"
            )
        return docs[:-n_val], docs[-n_val:], extra

    def _tokenizer(self, train_docs: list[str]) -> Tokenizer:
        s = self.settings
        multi = len(train_docs) > 1
        if s["tokenizer"] == "byte":
            return ByteTokenizer()
        if s["tokenizer"] == "char":
            return CharTokenizer.train(train_docs, with_eot=multi)
        if s["tokenizer"] == "bpe":
            if not s["vocab_size"]:
                raise ZooError("data.tokenizer=bpe needs data.vocab_size")
            return HFTokenizer.train_bpe(train_docs, s["vocab_size"])
        if not s["tokenizer_name"]:
            raise ZooError(
                "data.tokenizer=pretrained needs data.tokenizer_name (HF repo or tokenizer.json path)"
            )
        return HFTokenizer.pretrained(s["tokenizer_name"], str(self.cache_dir / "hf"))

    def build_cache(self, out: Path) -> None:
        train_docs, val_docs, extra = self._split()
        if not any(d.strip() for d in train_docs) or not any(d.strip() for d in val_docs):
            raise ZooError(f"data ({self.name}): the text corpus is empty after splitting")
        tok = self._tokenizer(train_docs)
        dtype = "uint16" if tok.vocab_size <= 2**16 else "uint32"
        eot = tok.eot_id if len(train_docs) + len(val_docs) > 2 else None
        files: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for split, docs in (("train", train_docs), ("val", val_docs)):
            files[split], counts[split] = self._write_shards(out, split, docs, tok, eot, dtype)
        n_sep = len(val_docs) if eot is not None else 0
        manifest = {
            "name": self.name,
            "settings": self.settings,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": dtype,
            "files": files,
            "tokens": counts,
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            # Each document separator counts as one character (as a newline would).
            "val_chars": sum(len(d) for d in val_docs) + n_sep,
            "val_bytes": sum(len(d.encode("utf-8")) for d in val_docs) + n_sep,
            "fingerprint": fingerprint(self.settings),
            **extra,
        }
        (out / "tokenizer.json").write_text(tok.to_json())
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))

    def _write_shards(
        self, out: Path, split: str, docs: list[str], tok: Tokenizer, eot: int | None, dtype: str
    ) -> tuple[list[str], int]:
        shard_tokens = int(self.settings["shard_tokens"])
        names, buffer, total = [], [], 0

        def flush() -> None:
            name = f"{split}_{len(names):03d}.bin"
            np.asarray(buffer, dtype=dtype).tofile(out / name)
            names.append(name)
            buffer.clear()

        batch = 1024
        for i in range(0, len(docs), batch):
            chunk = docs[i : i + batch]
            encoded = (
                tok.encode_batch(chunk) if isinstance(tok, HFTokenizer) else [tok.encode(d) for d in chunk]
            )
            for ids in encoded:
                buffer.extend(ids)
                if eot is not None:
                    buffer.append(eot)
                total += len(ids) + (eot is not None)
                if len(buffer) >= shard_tokens:
                    flush()
        if buffer or not names:
            flush()
        return names, total

    # -- setup -------------------------------------------------------------------------------------
    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest:
            self.prepare_data()
            self.manifest = json.loads((self.folder / "manifest.json").read_text())
        return self.manifest

    def setup(self, stage: str | None = None) -> None:
        m = self._load_manifest()
        paths = {split: [self.folder / f for f in m["files"][split]] for split in ("train", "val")}
        self.train_set = TokenWindows(
            paths["train"], m["dtype"], self.block_size, self.train_stride, cover_all=False
        )
        self.val_set = TokenWindows(
            paths["val"], m["dtype"], self.block_size, self.block_size, cover_all=True
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
