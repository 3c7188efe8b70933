"""Tokenizers for the GPT family: bytes, characters, or a byte-level BPE trained on the training split
(HF `tokenizers`), or a pretrained HF tokenizer (e.g. gpt2). All serialize to one JSON string that is
stored in the data cache, in every checkpoint and in the safetensors export."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from zoo.core.errors import ZooError

EOT = "<eos>"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int | None

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_json(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes (0..255) plus an end-of-text token 256: no training, any text."""

    kind = "byte"

    def __init__(self) -> None:
        self.vocab_size = 257
        self.eot_id: int | None = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind})


class CharTokenizer:
    """One id per distinct character of the training text (sorted), plus an optional end-of-text token."""

    kind = "char"

    def __init__(self, chars: str, with_eot: bool):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars) if with_eot else None
        self.vocab_size = len(chars) + int(with_eot)

    @classmethod
    def train(cls, texts: Iterable[str], with_eot: bool) -> CharTokenizer:
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls("".join(sorted(chars)), with_eot)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            shown = self.chars if len(self.chars) <= 40 else self.chars[:40] + "..."
            raise ZooError(
                f"character {err.args[0]!r} is not in the character vocabulary of this model "
                f"(expected one of the {len(self.chars)} characters {shown!r})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids if i < len(self.chars))

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": self.chars, "eot": self.eot_id is not None})


class HFTokenizer:
    """A HF `tokenizers` tokenizer: a byte-level BPE trained here, or a pretrained one."""

    kind = "hf"

    def __init__(self, tok):  # tokenizers.Tokenizer
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = next(
            (tok.token_to_id(t) for t in (EOT, "<|endoftext|>") if tok.token_to_id(t) is not None), None
        )

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<pad>", EOT, "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def pretrained(cls, name_or_path: str, cache_dir: str | None = None) -> HFTokenizer:
        from pathlib import Path

        from tokenizers import Tokenizer as HFTok

        if Path(name_or_path).is_file():
            return cls(HFTok.from_file(name_or_path))
        if (Path(name_or_path) / "tokenizer.json").is_file():  # a folder saved by transformers / format=hf
            return cls(HFTok.from_file(str(Path(name_or_path) / "tokenizer.json")))
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name_or_path, "tokenizer.json", cache_dir=cache_dir)
        except Exception as err:  # offline, unknown repo, ...
            raise ZooError(
                f"data.tokenizer_name={name_or_path}: could not fetch tokenizer.json from the HF hub ({type(err).__name__}); "
                "pass a local tokenizer.json path instead"
            ) from err
        return cls(HFTok.from_file(path))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": self.tok.to_str()})


def encode_arrays(tok: Tokenizer, texts: list[str], dtype: str, batch: int = 1024) -> list[np.ndarray]:
    """Token ids of each text as a numpy array of `dtype`, the same ids as ``tok.encode``.

    HF tokenizers get `batch` texts per ``encode_batch`` call: whole pieces measured ~8% faster per core
    than batches of 256 (and ``encode_batch_fast`` was no faster); bytes go through numpy directly.
    """
    if isinstance(tok, ByteTokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]
    if isinstance(tok, HFTokenizer):
        out: list[np.ndarray] = []
        for i in range(0, len(texts), batch):
            out.extend(np.asarray(e.ids, dtype=dtype) for e in tok.tok.encode_batch(texts[i : i + batch]))
        return out
    return [np.asarray(tok.encode(t), dtype=dtype) for t in texts]


def tokenizer_from_json(blob: str) -> Tokenizer:
    spec = json.loads(blob)
    if spec["kind"] == "byte":
        return ByteTokenizer()
    if spec["kind"] == "char":
        return CharTokenizer(spec["chars"], spec["eot"])
    if spec["kind"] == "hf":
        from tokenizers import Tokenizer as HFTok

        return HFTokenizer(HFTok.from_str(spec["tokenizer"]))
    raise ZooError(f"unknown tokenizer kind {spec['kind']!r} in saved tokenizer")


PROBE = "The quick brown fox jumps over the lazy dog.\nFIRST Citizen: 0123456789 -- 'a,b;c?' é 東"


def same_ids(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give the same ids, whatever their JSON (a HF library rewrites tokenizer.json
    when it saves it; a zoo char vocabulary exported as a BPE is the same tokenizer): the same vocabulary
    size and end-of-text id, every token decoding to the same text, and the same ids on a probe text."""
    if (a.vocab_size, a.eot_id) != (b.vocab_size, b.eot_id):
        return False
    if any(a.decode([i]) != b.decode([i]) for i in range(a.vocab_size) if i != a.eot_id):
        return False
    probe = "".join(c for c in PROBE if c in a.stoi) if isinstance(a, CharTokenizer) else PROBE
    try:
        return a.encode(probe) == b.encode(probe)
    except ZooError:  # a character vocabulary without some probe character
        return False
