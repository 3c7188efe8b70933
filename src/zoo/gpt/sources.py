"""Where GPT training text comes from: local files (a file, folder or glob of parquet / jsonl(.gz) /
csv(.gz) / json / txt), the HF hub (file by file), a URL, the Python standard library's own sources
(offline default), or a generated Markov corpus with a known entropy rate (for tests).

Large sources are never held in memory: a `Source` yields `Piece`s (batches of documents in a fixed reading
order, read incrementally with pyarrow) that the GPT datamodule tokenizes and writes to shards as they come.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import gzip
import hashlib
import json
import math
import sysconfig
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.core.errors import ZooError

SUFFIX_KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
                ".csv": "csv", ".txt": "txt"}  # fmt: skip
SUPPORTED = ".parquet / .jsonl(.gz) / .csv(.gz) / .json / .txt"


def stdlib_documents(max_bytes: int) -> list[str]:
    """The standard library's .py files (tests excluded), sorted by path, until `max_bytes` of text.

    Exists on every machine that runs Python, needs no download, and is real code.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idle_test", "site-packages", "lib2to3") for p in rel):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    if not docs:
        raise ZooError(f"no Python sources found under {root} for data.source=stdlib")
    return docs


def file_kind(path: str | Path) -> str | None:
    """The reader a file name asks for (``parquet``, ``jsonl``, ``json``, ``csv``, ``txt``), or None."""
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, kind in SUFFIX_KINDS.items():
        if name.endswith(suffix):
            return kind
    return None


def resolve_files(path: str | Path) -> tuple[list[Path], bool]:
    """`data.path` -> its files in reading order, and whether it named one file.

    A file is itself; a folder is every supported file under it (recursively); anything with ``*``, ``?``
    or ``[`` is a glob. Files are sorted by path, so the reading order never depends on the file system.
    """
    text = str(path)
    p = Path(text).expanduser()
    if p.is_file():
        return [p], True
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and file_kind(f))
        if not files:
            raise ZooError(f"data.path={p}: the folder has no {SUPPORTED} files")
        return files, False
    if any(c in text for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise ZooError(f"data.path={text}: no files match")
        for f in files:
            if file_kind(f) is None:
                raise ZooError(f"data.path={text}: {f} is not one of the supported {SUPPORTED} files")
        return files, False
    raise ZooError(f"data.path={p}: no such file")


def files_digest(files: list[Path]) -> dict[str, Any]:
    """Names, sizes and mtimes of local files: a changed or added file must not reuse a stale cache."""
    stats = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    if len(stats) == 1:
        return {"file": stats[0]}
    blob = json.dumps(stats).encode()
    return {"files": len(stats), "digest": hashlib.sha256(blob).hexdigest()[:16]}


def check_column(names: list[str], column: str | None, where: str, what: str = "data.column") -> None:
    if column is None:
        raise ZooError(f"{where}: set {what} to the text column (columns: {', '.join(map(str, names))})")
    if column not in names:
        raise ZooError(
            f"{where}: no column {column!r} ({what}): expected one of {', '.join(map(str, names))}"
        )


@dataclass
class Piece:
    """A batch of documents in reading order, and where it sits in the source.

    ``key`` (file, group, batch) increases along the source; a prep resumed after the piece with key K
    asks the source for the pieces after K, which the readers reach without re-reading the files before
    it (row groups before it, for Parquet). ``splits``: a fixed split per text (0 train, 1 val) instead of
    the hash split; ``clean``: strip the texts and drop empty ones (not for a single document split by
    characters, whose two halves are kept exactly).
    """

    key: tuple[int, int, int]
    texts: list[str | None]
    ids: list[str | None] | None = None
    splits: list[int] | None = None
    clean: bool = True


def _strings(array) -> list[str | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    return array.to_pylist()


def _read_error(where: str, kind: str, err: Exception) -> ZooError:
    return ZooError(f"{where}: cannot read as {kind} ({type(err).__name__}: {err})")


def _first_json_record(path: Path, where: str) -> dict[str, Any]:
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("a line is not a JSON object")
                    return record
    except (OSError, ValueError) as err:
        raise _read_error(where, "jsonl", err) from err
    raise ZooError(f"{where}: the file is empty (no text to train on)")


def _arrow_type(value: Any):
    import pyarrow as pa

    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


Batches = Iterator[tuple[tuple[int, int], list[str | None], list[str | None] | None]]


def iter_table(
    path: Path,
    column: str | None,
    id_column: str | None = None,
    after: tuple[int, int] | None = None,
    rows: int = 1024,
    where: str | None = None,
) -> Batches:
    """Batches of (``(group, batch)``, texts, ids) of one file, read incrementally with pyarrow.

    Parquet is read row group by row group in batches of `rows`; CSV and JSON lines in blocks of a few
    MB; a text file is one document. Only the batches after `after` are yielded; Parquet row groups
    before it are not read at all. One reader per format (`_READERS`).
    """
    where = where or f"data.path={path}"
    kind = file_kind(path)
    if kind not in _READERS:
        raise ZooError(f"{where}: not one of the supported {SUPPORTED} files")

    def skip(group: int, batch: int) -> bool:
        return after is not None and (group, batch) <= tuple(after)

    yield from _READERS[kind](_Request(path, column, id_column, rows, where, skip, after[0] if after else 0))


@dataclass
class _Request:
    """What a format's reader reads: the file, its columns, the batch size, and which batches to skip."""

    path: Path
    """The file."""
    column: str | None
    """The text column."""
    id_column: str | None
    """The document id column (None: none)."""
    rows: int
    """Rows per batch."""
    where: str
    """What errors name (``data.path=...``)."""
    skip: Any
    """skip(group, batch): a batch already consumed (resuming)."""
    first_group: int
    """The first Parquet row group to read."""

    @property
    def columns(self) -> list[str]:
        return [self.column] + ([self.id_column] if self.id_column else [])

    def check(self, names: list[str]) -> None:
        check_column(names, self.column, self.where)
        if self.id_column:
            check_column(names, self.id_column, self.where, "data.id_column")

    def split(self, batch: Any) -> tuple[list[str | None], list[str | None] | None]:
        """(texts, ids) of an Arrow batch holding `columns`."""
        return _strings(batch.column(0)), (_strings(batch.column(1)) if self.id_column else None)


def _txt_batches(req: _Request) -> Batches:
    if not req.skip(0, 0):
        yield (0, 0), [_read_text(req.path)], None


def _json_batches(req: _Request) -> Batches:
    """One JSON document (a list of records): small by nature, read whole."""
    try:
        records = json.loads(_read_text(req.path))
    except ValueError as err:
        raise _read_error(req.where, "json", err) from err
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ZooError(f"{req.where}: expected a JSON list of records (or use .jsonl, one record a line)")
    check_column(sorted({k for r in records for k in r}), req.column, req.where)

    def text(r: dict[str, Any], key: str | None) -> str | None:
        return None if r.get(key) is None else str(r.get(key))

    for b, i in enumerate(range(0, len(records), req.rows)):
        part = records[i : i + req.rows]
        if not req.skip(0, b):
            ids = [text(r, req.id_column) for r in part] if req.id_column else None
            yield (0, b), [text(r, req.column) for r in part], ids


def _parquet_batches(req: _Request) -> Batches:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(req.path)
    except Exception as err:
        raise _read_error(req.where, "parquet", err) from err
    req.check(pf.schema_arrow.names)
    for g in range(req.first_group, pf.num_row_groups):
        try:
            batches = pf.iter_batches(
                batch_size=req.rows, row_groups=[g], columns=req.columns, use_threads=False
            )
            for b, batch in enumerate(batches):
                if not req.skip(g, b):
                    yield (g, b), *req.split(batch)
        except (OSError, pa.ArrowException) as err:
            raise _read_error(req.where, "parquet", err) from err


def _csv_batches(req: _Request) -> Batches:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    opener = gzip.open if str(req.path).lower().endswith(".gz") else open
    try:
        with opener(req.path, "rt", encoding="utf-8", newline="") as f:
            names = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _read_error(req.where, "csv", err) from err
    if not names:
        raise ZooError(f"{req.where}: the file is empty (no text to train on)")
    req.check(names)
    cols = req.columns
    try:
        reader = pcsv.open_csv(
            pa.input_stream(str(req.path), compression="detect"),
            read_options=pcsv.ReadOptions(block_size=16 << 20, use_threads=False),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                include_columns=cols, column_types={c: pa.string() for c in cols}
            ),
        )
    except (OSError, pa.ArrowException) as err:
        raise _read_error(req.where, "csv", err) from err
    yield from _stream_batches(req, reader, "csv")


def _jsonl_batches(req: _Request) -> Batches:
    import pyarrow as pa
    import pyarrow.json as pjson

    record = _first_json_record(req.path, req.where)
    req.check(list(record))
    schema = pa.schema([(c, pa.string() if c == req.column else _arrow_type(record[c])) for c in req.columns])
    try:
        reader = pjson.open_json(
            pa.input_stream(str(req.path), compression="detect"),
            read_options=pjson.ReadOptions(block_size=16 << 20, use_threads=False),
            parse_options=pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (OSError, pa.ArrowException) as err:
        raise _read_error(req.where, "jsonl", err) from err
    yield from _stream_batches(req, reader, "jsonl")


def _stream_batches(req: _Request, reader: Any, kind: str) -> Batches:
    """A pyarrow CSV/JSON-lines stream's blocks (a few MB each), cut into batches of `rows` like Parquet's."""
    import pyarrow as pa

    with reader:
        b = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as err:
                raise _read_error(req.where, kind, err) from err
            batch = batch.select(req.columns)
            for i in range(0, batch.num_rows, req.rows):
                if not req.skip(0, b):
                    yield (0, b), *req.split(batch.slice(i, req.rows))
                b += 1


_READERS = {
    "txt": _txt_batches,
    "json": _json_batches,
    "parquet": _parquet_batches,
    "csv": _csv_batches,
    "jsonl": _jsonl_batches,
}


def _read_text(path: Path) -> str:
    if str(path).lower().endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors="replace")


def single_text(path: Path) -> str:
    """A single .txt file: the whole of it is one document."""
    text = _read_text(path)
    if not text.strip():
        raise ZooError(f"data.path={path}: the file is empty (no text to train on)")
    return text


class Source:
    """Documents in a fixed reading order, as `Piece`s; `files()` names what the pieces come from."""

    def files(self) -> list[str]:
        return []

    def pieces(self, after: tuple[int, int, int] | None = None) -> Iterator[Piece]:
        raise NotImplementedError


class ListSource(Source):
    """Documents already in memory (small corpora: stdlib, a shuffled table, one split text)."""

    def __init__(
        self, texts: list[str], splits: list[int] | None = None, clean: bool = True, rows: int = 1024
    ):
        self.texts, self.splits, self.clean, self.rows = texts, splits, clean, rows

    def pieces(self, after: tuple[int, int, int] | None = None) -> Iterator[Piece]:
        for b, i in enumerate(range(0, len(self.texts), self.rows)):
            if after is None or (0, 0, b) > tuple(after):
                splits = self.splits[i : i + self.rows] if self.splits is not None else None
                yield Piece((0, 0, b), self.texts[i : i + self.rows], None, splits, self.clean)


class FileSource(Source):
    """Local files (`resolve_files`), each read incrementally by `iter_table`."""

    def __init__(self, files: list[Path], column: str | None, id_column: str | None = None, rows: int = 1024):
        self.paths, self.column, self.id_column, self.rows = files, column, id_column, rows

    def files(self) -> list[str]:
        return [str(f) for f in self.paths]

    def pieces(self, after: tuple[int, int, int] | None = None) -> Iterator[Piece]:
        for i, path in enumerate(self.paths):
            if after is not None and i < after[0]:
                continue
            inner = tuple(after[1:]) if after is not None and i == after[0] else None
            for (g, b), texts, ids in iter_table(path, self.column, self.id_column, inner, self.rows):
                yield Piece((i, g, b), texts, ids)


def download(url: str, cache_dir: Path) -> Path:
    """Fetch `url` once into `cache_dir/downloads` (atomic rename) and return the local path."""
    target = cache_dir / "downloads" / url.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as err:
        raise ZooError(
            f"data.url={url}: download failed ({err}); pass a local copy with data.path=..."
        ) from err
    tmp.replace(target)
    return target


def _matches(name: str, patterns: list[str] | None) -> bool:
    if not patterns:
        return True
    # A pattern without wildcards is a folder of the repo (e.g. sample/10BT) or one file.
    return any(fnmatch.fnmatch(name, p) or name.startswith(p.rstrip("/") + "/") for p in patterns)


class HubSource(Source):
    """A HF hub dataset read file by file: list the repo's data files (`data.hf_files` patterns), then
    for each one download it with `hf_hub_download`, read it, and delete it again unless
    `keep_downloads` (files that were in the cache before are never deleted). Offline (``HF_HUB_OFFLINE=1``
    or no network) the files come from a pre-filled hub cache under ``cache_dir``."""

    def __init__(
        self,
        repo: str,
        column: str | None,
        cache_dir: Path,
        revision: str | None = None,
        patterns: list[str] | None = None,
        id_column: str | None = None,
        keep_downloads: bool = False,
        files: list[str] | None = None,
        rows: int = 1024,
    ):
        self.repo, self.column, self.cache_dir, self.revision = repo, column, Path(cache_dir), revision
        self.patterns, self.id_column, self.keep, self.rows = patterns, id_column, keep_downloads, rows
        self._files = files  # a resumed prep reads the listing it started with

    def _listing(self) -> list[str]:
        from huggingface_hub import HfApi

        try:
            return list(HfApi().list_repo_files(self.repo, repo_type="dataset", revision=self.revision))
        except Exception as err:  # offline, unknown repo, no network: try a pre-filled cache
            try:
                from huggingface_hub import snapshot_download

                folder = Path(
                    snapshot_download(
                        self.repo, repo_type="dataset", revision=self.revision,
                        cache_dir=str(self.cache_dir), local_files_only=True,
                    )
                )  # fmt: skip
            except Exception:
                raise ZooError(
                    f"data.hf_repo={self.repo}: cannot list the dataset's files on the HF hub "
                    f"({type(err).__name__}) and it is not in the hub cache {self.cache_dir}; offline, "
                    "pass local files with data.path=..."
                ) from err
            return sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())

    def files(self) -> list[str]:
        if self._files is None:
            listing = self._listing()
            self._files = sorted(n for n in listing if file_kind(n) and _matches(n, self.patterns))
            if not self._files:
                shown = ", ".join(sorted(listing)[:5]) or "none"
                raise ZooError(
                    f"data.hf_repo={self.repo}: no parquet/jsonl/csv/txt files match data.hf_files="
                    f"{self.patterns} (the repo has {len(listing)} files: {shown}...)"
                )
        return self._files

    def download(self, name: str) -> tuple[Path, bool]:
        """The local path of one repo file, and whether this call downloaded it (so may delete it)."""
        import huggingface_hub

        kwargs = {"repo_id": self.repo, "filename": name, "repo_type": "dataset", "revision": self.revision,
                  "cache_dir": str(self.cache_dir)}  # fmt: skip
        cached = huggingface_hub.try_to_load_from_cache(**kwargs)
        try:
            path = huggingface_hub.hf_hub_download(**kwargs)
        except Exception as err:
            raise ZooError(
                f"data.hf_repo={self.repo}: could not download {name} from the HF hub ({type(err).__name__}); "
                f"offline, pre-fill the hub cache {self.cache_dir} or pass local files with data.path=..."
            ) from err
        return Path(path), not isinstance(cached, str)

    @staticmethod
    def delete(path: Path) -> None:
        blob = path.resolve()  # the hub cache links snapshots/<rev>/<name> to blobs/<hash>
        path.unlink(missing_ok=True)
        if blob != path:
            blob.unlink(missing_ok=True)

    def pieces(self, after: tuple[int, int, int] | None = None) -> Iterator[Piece]:
        for i, name in enumerate(self.files()):
            if after is not None and i < after[0]:
                continue  # done before an interruption: not downloaded again
            local, downloaded = self.download(name)
            inner = tuple(after[1:]) if after is not None and i == after[0] else None
            try:
                where = f"data.hf_repo={self.repo} file {name}"
                for (g, b), texts, ids in iter_table(
                    local, self.column, self.id_column, inner, self.rows, where
                ):
                    yield Piece((i, g, b), texts, ids)
            finally:  # also when the consumer stops early (data.max_tokens)
                if downloaded and not self.keep:
                    self.delete(local)


def markov_corpus(
    n_tokens: int, alphabet: str, order: int, concentration: float, seed: int
) -> tuple[str, np.ndarray]:
    """A text drawn from a random order-`order` Markov chain over `alphabet`.

    Each context's next-symbol distribution is Dirichlet(`concentration`): small values make it peaked,
    so the chain has structure to learn. Returns the text and, for each position t >= order, the true
    -log p(x_t | previous `order` symbols): its mean over a span is the lowest loss any model can expect
    there (the entropy floor), which tests compare a trained model against.
    """
    if order < 1 or len(alphabet) < 2 or n_tokens <= order:
        raise ZooError("data.synthetic needs order >= 1, an alphabet of >= 2 symbols and n_tokens > order")
    rng = np.random.default_rng(seed)
    k = len(alphabet)
    probs = rng.dirichlet(np.full(k, concentration), size=k**order)  # (contexts, k)
    cdf = np.cumsum(probs, axis=1)
    seq = np.empty(n_tokens, dtype=np.int64)
    seq[:order] = rng.integers(0, k, size=order)
    uniforms = rng.random(n_tokens)
    nll = np.zeros(n_tokens)
    ctx = 0
    for t in range(order):
        ctx = ctx * k + seq[t]
    mod = k ** (order - 1)
    for t in range(order, n_tokens):
        sym = min(int(np.searchsorted(cdf[ctx], uniforms[t], side="right")), k - 1)
        seq[t] = sym
        nll[t] = -math.log(max(probs[ctx, sym], 1e-300))
        ctx = (ctx % mod) * k + sym
    text = "".join(alphabet[i] for i in seq)
    return text, nll
