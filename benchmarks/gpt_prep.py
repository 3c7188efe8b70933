"""GPT data-prep benchmark: `python -m benchmarks.gpt_prep [--size-mb 1024] [--flat] [--smoke]`.

Generates a Parquet corpus of `--size-mb` MB of text (nothing large is committed), trains a local 8k
byte-level BPE tokenizer.json on a sample of it (no download), then runs, each in its own process:

plain      a plain loop over the file's row groups: `encode_batch` on one core, uint16 written as it goes
plain x2   two forked copies of it on alternate batches: what two cores give at most (for reference)
zoo x1     `TextDataModule.prepare_data()` (data=gpt/web_text's settings on the local file), 1 worker
zoo x2     the same with 2 workers (must give byte-identical shards)
resume     zoo x2 SIGKILLed once ~50% of the tokens are written, then run again to the end: total time
           and bytes against the uninterrupted run
flat       (--flat) zoo x2 on a corpus 1/4 the size: peak memory of the full corpus (4x) against it

Memory is the peak over the whole process tree (the prep and its workers): PSS summed over the processes
from /proc/<pid>/smaps_rollup every second (forked workers share pages with the main process, so summed
RSS would count those pages once per process) and, for reference, summed RSS from /proc/<pid>/statm
every 50 ms. (Reading smaps_rollup makes the kernel walk the page tables: every 50 ms it cost the
measured prep 15%.)
Writes docs/benchmarks/gpt-prep.json and the page rendered from it, gpt-prep.md (with --smoke: both in
<workdir>, never docs/); `python -m benchmarks.report` joins the page into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
ROWS_PER_GROUP = 10_000


# -- the corpus -----------------------------------------------------------------------------------


def vocabulary(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Words and their frequencies: Shakespeare's when the shared data is there (a real Zipf curve and
    real spellings for the BPE), else made-up syllable words with Zipf frequencies."""
    if SHAKESPEARE.is_file():
        words, counts = np.unique(SHAKESPEARE.read_text().split(), return_counts=True)
        return words.astype(object), counts / counts.sum()
    rng = np.random.default_rng(seed)
    syllables = [a + b for a in "bcdfghklmnprstvw" for b in "aeiou"]
    words = np.array(
        ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(20_000)], dtype=object
    )
    freq = 1.0 / np.arange(1, len(words) + 1)
    return words, freq / freq.sum()


def make_corpus(path: Path, size_mb: float, seed: int = 0) -> dict[str, int]:
    """A Parquet file of ~`size_mb` MB of text: documents of 300..8000 characters (log-uniform), words
    drawn from `vocabulary`, lines of ~12 words; row groups of 10k documents, written one at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words, freq = vocabulary(seed)
    target, written, docs = int(size_mb * 1e6), 0, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as writer:
        while written < target:
            lengths = np.exp(rng.uniform(np.log(300), np.log(8000), ROWS_PER_GROUP)).astype(int)
            n_words = int(lengths.sum() / 5.5) + 1000
            picked = words[rng.choice(len(words), size=n_words, p=freq)]
            picked[rng.random(n_words) < 1 / 12] += "\n"
            text = " ".join(picked)
            ends = np.minimum(np.cumsum(lengths), len(text))
            texts = [text[a:b].strip() for a, b in zip(np.r_[0, ends[:-1]], ends, strict=True)]
            sizes = np.cumsum([len(t) for t in texts])
            texts = texts[: int(np.searchsorted(sizes, target - written)) + 1]  # stop at the size asked for
            ids = [f"<urn:doc:{seed}:{docs + i}>" for i in range(len(texts))]
            writer.write_table(pa.table({"id": ids, "text": texts}))
            written += sum(len(t) for t in texts)
            docs += len(texts)
    return {"documents": docs, "chars": written, "bytes": path.stat().st_size}


def train_tokenizer(corpus: Path, out: Path, vocab: int, sample_docs: int = 1000) -> Path:
    import pyarrow.parquet as pq

    from zoo.gpt.tokenizer import HFTokenizer

    texts = pq.ParquetFile(corpus).read_row_group(0, columns=["text"]).column(0).to_pylist()[:sample_docs]
    HFTokenizer.train_bpe(texts, vocab).tok.save(str(out))
    return out


# -- the measured runs (children) ---------------------------------------------------------------------


def child_plain(corpus: str, tokenizer: str, out: str, parts: str = "1") -> None:
    """The plain loop; with `parts` > 1, that many forked copies each take every parts-th batch (the
    most any parallel prep could get from this machine's cores)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core: the baseline the worker counts scale from
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    eot = tok.token_to_id("<eos>")
    start = time.perf_counter()
    parts_n = int(parts)

    def loop(part: int) -> int:
        pf = pq.ParquetFile(corpus)
        n = b = 0
        with open(f"{out}.{part}", "wb") as f:
            for g in range(pf.num_row_groups):
                for batch in pf.iter_batches(batch_size=1024, row_groups=[g], columns=["text"]):
                    b += 1
                    if (b - 1) % parts_n != part:
                        continue
                    for enc in tok.encode_batch(batch.column(0).to_pylist()):
                        ids = np.asarray([*enc.ids, eot], dtype=np.uint16)
                        f.write(ids.tobytes())
                        n += len(ids)
        return n

    if parts_n == 1:
        n = loop(0)
    else:
        pids = []
        for part in range(parts_n):
            if (pid := os.fork()) == 0:
                Path(f"{out}.{part}.count").write_text(str(loop(part)))
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        n = sum(int(Path(f"{out}.{part}.count").read_text()) for part in range(parts_n))
    print(json.dumps({"tokens": n, "prep_s": time.perf_counter() - start}))


def zoo_settings(corpus: str, tokenizer: str, cache: str, workers: int) -> dict:
    """data=gpt/web_text's settings, on the local file and tokenizer."""
    return {"source": "file", "path": corpus, "column": "text", "id_column": "id", "val_fraction": 0.005,
            "tokenizer": "pretrained", "tokenizer_name": tokenizer, "block_size": 2048,
            "prep_workers": workers, "cache_dir": cache, "name": "bench"}  # fmt: skip


def child_zoo(corpus: str, tokenizer: str, cache: str, workers: int) -> None:
    from zoo.gpt.datamodule import TextDataModule

    start = time.perf_counter()  # after the imports (torch: seconds) that the plain loop does not pay
    dm = TextDataModule(**zoo_settings(corpus, tokenizer, cache, workers))
    dm.prepare_data()
    prep = time.perf_counter() - start
    m = json.loads((dm.folder / "manifest.json").read_text())
    print(json.dumps({"tokens": sum(m["tokens"].values()), "prep_s": prep, "folder": str(dm.folder)}))


# -- measuring a child --------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _rss(pids: list[int]) -> int:
    """Summed RSS of `pids`, from /proc/<pid>/statm: a counter read, nothing walked."""
    total = 0
    for pid in pids:
        try:
            total += int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _pss(pids: list[int]) -> int:
    """Summed PSS of `pids`, from /proc/<pid>/smaps_rollup. The kernel walks every page table for it
    (measured ~19 ms for a 2-worker prep tree, kernel time taken from the prep), so it is read seldom."""
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_EVERY, PSS_EVERY = 0.05, 1.0  # seconds; PSS every 50 ms cost the 2-worker prep 15% of its speed


def run_child(args: list[str], kill_when=None) -> dict:
    """Run `python -m benchmarks.gpt_prep --child ...`; wall time, peak tree memory and its JSON result.
    `kill_when()` true: SIGKILL the whole process group there (the result then has "killed": True).

    Summed RSS is polled every `RSS_EVERY` s, PSS every `PSS_EVERY` s (memory is flat once the workers
    run, so the coarser PSS series still sees its peak)."""
    cmd = [sys.executable, "-m", "benchmarks.gpt_prep", "--child", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    peak = {"pss": 0, "rss": 0}
    done = threading.Event()
    killed = []

    def poll() -> None:
        pids, next_pss, next_tree = [], 0.0, 0.0
        while not done.is_set():
            now = time.perf_counter()
            if now >= next_tree:  # workers start once, early: the tree is re-read every second
                pids, next_tree = _tree(proc.pid), now + 1.0
            peak["rss"] = max(peak["rss"], _rss(pids))
            if now >= next_pss:
                peak["pss"], next_pss = max(peak["pss"], _pss(pids)), now + PSS_EVERY
            if kill_when is not None and not killed and kill_when():
                killed.append(time.perf_counter())
                os.killpg(proc.pid, signal.SIGKILL)
            done.wait(RSS_EVERY)

    poller = threading.Thread(target=poll)
    poller.start()
    out, err = proc.communicate()
    done.set()
    poller.join()
    wall = time.perf_counter() - start
    if killed:
        return {"killed": True, "wall_s": wall, **peak}
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {shlex.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, **peak, **json.loads(out.strip().splitlines()[-1])}


def folder_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for f in sorted(folder.iterdir()):
        with open(f, "rb") as fh:
            out[f.name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def prep_progress(cache: Path) -> int:
    """Tokens written so far by a running prep (from its progress.json)."""
    total = 0
    for progress in cache.glob("gpt/*.tmp/progress.json"):
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            continue
        total += sum(s["open"] + sum(sh["tokens"] for sh in s["shards"]) for s in state["splits"].values())
    return total


# -- the benchmark ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size-mb", type=float, default=None, help="text in the corpus (default 1024; smoke 50)"
    )
    parser.add_argument("--flat", action="store_true", help="also prepare a 4x corpus (memory flatness)")
    parser.add_argument("--smoke", action="store_true", help="small and quick; the report goes to --workdir")
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "bench" / "gpt_prep")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--keep", action="store_true", help="keep the corpus and caches")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "plain":
            child_plain(*rest)
        else:
            child_zoo(rest[0], rest[1], rest[2], int(rest[3]))
        return

    size = args.size_mb or (50.0 if args.smoke else 1024.0)
    work = args.workdir
    shutil.rmtree(work / "runs", ignore_errors=True)
    corpus = work / f"corpus-{size:g}mb.parquet"
    tokenizer = work / f"bpe{args.vocab}.json"
    t0 = time.perf_counter()
    info_path = corpus.with_suffix(".json")
    if not (corpus.is_file() and info_path.is_file()):
        print(f"generating {size:g} MB of text -> {corpus}", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(make_corpus(corpus, size)))
    info = json.loads(info_path.read_text())
    if not tokenizer.is_file():
        train_tokenizer(corpus, tokenizer, args.vocab)
    print(f"corpus ready in {time.perf_counter() - t0:.0f} s: {info}", flush=True)

    runs = work / "runs"
    runs.mkdir(parents=True)
    results: dict[str, dict] = {}

    def zoo(name: str, workers: int, path: Path = corpus, kill_when=None) -> dict:
        cache = runs / name
        res = run_child(["zoo", str(path), str(tokenizer), str(cache), str(workers)], kill_when)
        print(f"{name}: {res}", flush=True)
        return res

    results["plain"] = run_child(["plain", str(corpus), str(tokenizer), str(runs / "plain.bin")])
    print(f"plain: {results['plain']}", flush=True)
    results["plain, 2 processes"] = run_child(
        ["plain", str(corpus), str(tokenizer), str(runs / "plain2.bin"), "2"]
    )
    print(f"plain, 2 processes: {results['plain, 2 processes']}", flush=True)
    for f in runs.glob("plain*.bin*"):
        f.unlink()
    results["zoo x1"] = zoo("x1", 1)
    results["zoo x2"] = zoo("x2", 2)
    total = results["zoo x2"]["tokens"]
    first = zoo("resume", 2, kill_when=lambda: prep_progress(runs / "resume") >= total / 2)
    killed_at = prep_progress(runs / "resume") / total
    second = zoo("resume", 2)
    both = first["wall_s"] + second["wall_s"]
    results["zoo x2, killed at ~50% + resumed"] = {**second, "wall_s": both, "prep_s": both,
        "pss": max(first["pss"], second["pss"]), "rss": max(first["rss"], second["rss"])}  # fmt: skip
    same = {
        "x1 vs x2": folder_hashes(Path(results["zoo x1"]["folder"])) == folder_hashes(Path(results["zoo x2"]["folder"])),
        "resumed vs x2": folder_hashes(Path(second["folder"])) == folder_hashes(Path(results["zoo x2"]["folder"])),
    }  # fmt: skip
    flat = None
    if args.flat:  # the same prep on a quarter of the text: the full corpus is 4x larger than it
        small = work / f"corpus-{size / 4:g}mb.parquet"
        if not small.is_file():
            print(f"generating {size / 4:g} MB of text -> {small}", flush=True)
            make_corpus(small, size / 4, seed=1)
        flat = zoo("x2-quarter", 2, small)
        results["zoo x2, corpus 1/4 the size"] = flat
    write_report(args, size, info, results, same, killed_at, flat)
    if not args.keep:
        shutil.rmtree(runs, ignore_errors=True)


def write_report(args, size, info, results, same, killed_at, flat) -> None:
    from benchmarks.common import save, stamp  # imports torch: not in the plain loop's process

    runs = {name: {"wall_s": r["wall_s"], "prep_s": r["prep_s"], "tokens": r["tokens"],
                   "tokens_per_s": r["tokens"] / r["prep_s"], "pss_mb": r["pss"] / 2**20, "rss_mb": r["rss"] / 2**20}
            for name, r in results.items()}  # fmt: skip
    report = {**stamp("python -m benchmarks.gpt_prep " + " ".join(shlex.quote(a) for a in sys.argv[1:])),
              "corpus": {**info, "rows_per_group": ROWS_PER_GROUP}, "vocab": args.vocab, "order": list(runs),
              "runs": runs, "same_bytes": same, "killed_at": killed_at}  # fmt: skip
    target = (args.workdir if args.smoke else OUT) / "gpt-prep.json"
    save(target, report, render)
    print("\n".join(render(report)))
    print(f"written to {target.with_suffix('.md')}")


def render(r: dict) -> list[str]:
    """docs/benchmarks/gpt-prep.md from gpt-prep.json: the runs, and the goals checked from their numbers."""
    from benchmarks.common import section, table

    runs = {name: r["runs"][name] for name in r["order"]}  # the JSON's keys are sorted
    base = runs["plain"]["tokens_per_s"]
    rows = [[name, f"{x['wall_s']:.1f}", f"{x['prep_s']:.1f}", f"{x['tokens']:,}", f"{x['tokens_per_s']:,.0f}",
             f"{x['tokens_per_s'] / base:.2f}x", f"{x['pss_mb']:,.0f}", f"{x['rss_mb']:,.0f}"] for name, x in runs.items()]  # fmt: skip
    x1, x2 = runs["zoo x1"], runs["zoo x2"]
    resumed, same = runs["zoo x2, killed at ~50% + resumed"], r["same_bytes"]
    peak = max(x["pss_mb"] for k, x in runs.items() if k.startswith("zoo"))  # the 1/4 corpus included
    checks = [
        ("peak memory of the whole prep (PSS, process tree)", f"{peak:,.0f} MB", "<= 1024 MB", peak <= 1024),
        ("tokens/s, 1 worker / plain loop", f"{x1['tokens_per_s'] / base:.2f}x", ">= 0.9x", x1["tokens_per_s"] / base >= 0.9),
        ("tokens/s, 2 workers / plain loop", f"{x2['tokens_per_s'] / base:.2f}x", ">= 1.7x", x2["tokens_per_s"] / base >= 1.7),
        (f"killed at {r['killed_at']:.0%} + resumed / uninterrupted (2 workers)",
         f"{resumed['wall_s'] / x2['wall_s']:.3f}x", "<= 1.15x", resumed["wall_s"] / x2["wall_s"] <= 1.15),
        ("resumed cache bytes = uninterrupted", str(same["resumed vs x2"]), "identical", same["resumed vs x2"]),
        ("1 worker bytes = 2 workers", str(same["x1 vs x2"]), "identical", same["x1 vs x2"]),
    ]  # fmt: skip
    flat = runs.get("zoo x2, corpus 1/4 the size")
    if flat is not None:
        ratio = x2["pss_mb"] / flat["pss_mb"]
        checks.append(
            ("peak memory, full corpus / 1/4 of it (2 workers)", f"{ratio:.2f}x", "<= 1.20x", ratio <= 1.2)
        )
    ceiling = runs["plain, 2 processes"]["tokens_per_s"] / base
    per_core = x1["prep_s"] / x1["tokens"] * 1e9  # one worker = one core
    per_core_x2 = x2["prep_s"] * 2 / x2["tokens"] * 1e9
    c = r["corpus"]
    intro = (
        f"Generated Parquet corpus: {c['chars'] / 1e6:,.0f} MB of text, {c['documents']:,} documents "
        f"({c['bytes'] / 1e6:,.0f} MB on disk, row groups of {c['rows_per_group']:,}); local byte-level BPE "
        f"tokenizer.json, {r['vocab']} tokens. zoo = `TextDataModule.prepare_data()` with data=gpt/web_text's "
        "settings on that file (hash split by id, val 0.5%, uint16 shards of 2^27 tokens, sha256 per shard); "
        "plain = a loop over the row groups, `encode_batch` on one core, uint16 written as it goes. "
        "wall s: the whole process; prep s (tokens/s): from the start of the prep, after the imports "
        "(the zoo process imports torch, the plain loop does not); the resume row adds both processes' wall "
        "times and is compared with the uninterrupted wall time. Memory: peak over the process tree, PSS "
        "summed (what the tree holds: forked workers share the main process's pages, which summed RSS "
        "counts once per process) and RSS summed."
    )
    return section(
        "GPT data prep: the streaming corpus pipeline", r, intro,
        table(["run", "wall s", "prep s", "tokens", "tokens/s", "vs plain", "peak PSS MB", "peak RSS sum MB"], rows),
        table(["target", "measured", "goal", "met"], [[a, b, g, "yes" if d else "**no**"] for a, b, g, d in checks]),
        f"Two plain loops side by side reach {ceiling:.2f}x one: the most two workers could give here.",
        f"Prep time per billion tokens per core: **{per_core / 60:,.1f} min** with 1 worker "
        f"({per_core_x2 / 60:,.1f} core-min with 2 workers), with this tokenizer and text.",
    )  # fmt: skip


PAGES = {"gpt-prep": render}


if __name__ == "__main__":
    main()
