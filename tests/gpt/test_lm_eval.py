"""lm-evaluation-harness (the real ``lm_eval`` package) on a ``format=hf`` export: a multiple-choice task
defined here (task YAML + local JSON dataset, no network) scores every choice with the same log-likelihoods
the zoo network gives, and reports the accuracy those imply."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from zoo.gpt.hf import save_hf
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.tokenizer import ByteTokenizer

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm_eval's hf model imports it

PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]
TASK = """task: zoo_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def continuation_logprob(net: GPT, tok: ByteTokenizer, context: str, continuation: str) -> float:
    ctx, ids = tok.encode(context), tok.encode(context + continuation)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(net(x[:, :-1]).float(), dim=-1)[0]
    return float(sum(logp[i - 1, ids[i]] for i in range(len(ctx), len(ids))))


@pytest.mark.slow
def test_lm_eval_scores_a_local_multiple_choice_task_on_the_export(tmp_path):
    tok = ByteTokenizer()
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    export = save_hf(net, tok.to_json(), tmp_path / "export")
    docs = [
        {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b), "none"], "answer": i % 4}
        for i, (a, b) in enumerate(PAIRS)
    ]  # fmt: skip
    (tmp_path / "data.json").write_text("\n".join(json.dumps(d) for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "zoo_tiny_mc.yaml").write_text(TASK.format(data=tmp_path / "data.json"))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "ds"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={export},dtype=float32",
         "--tasks", "zoo_tiny_mc", "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "8",
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    (samples,) = (tmp_path / "out").rglob("samples_zoo_tiny_mc_*.jsonl")
    acc = json.loads(results.read_text())["results"]["zoo_tiny_mc"]["acc,none"]
    right = 0
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        doc = docs[sample["doc_id"]]
        theirs = [float(r[0][0]) for r in sample["resps"]]
        mine = [continuation_logprob(net, tok, doc["question"], " " + c) for c in doc["choices"]]
        assert theirs == pytest.approx(mine, abs=1e-3)
        right += max(range(4), key=mine.__getitem__) == doc["answer"]
    assert acc == pytest.approx(right / len(docs))
