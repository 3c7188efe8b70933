"""`python -m zoo.serve` of a GPT: OpenAI's /v1/completions through the official client (streaming and
not), greedy answers equal to `zoo.predict`'s, concurrent requests decoded together (batched KV cache with
left padding, checked against one-at-a-time decoding), bad requests answered in one line while the server
keeps serving, and SIGTERM finishing the request in flight."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.gpt.test_predict import train_small_run
from tests.serving import one_line_error, serving
from zoo.core.config import compose_config
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.serve import DecodeBatch, Row

TINY = ["data=gpt/synthetic", "data.synthetic.n_tokens=20000", "model.net.n_layer=1", "model.net.n_embd=16",
        "model.net.n_head=2", "data.block_size=32", "data.batch_size=4"]  # fmt: skip
PROMPTS = ["a", "abcdefgh", "ponm", "hello"[:3], "abcabcabcabc"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A GPT trained for 3 steps: its run folder."""
    root = tmp_path_factory.mktemp("gpt_serve")
    train_small_run(root, cache_dir, TINY)
    return root / "run"


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("gpt_serve_logs")
    with serving(
        trained, "max_tokens_cap=20", "max_body_bytes=2000", "max_batch_size=8", log_dir=logs
    ) as srv:
        yield srv


def predicted(run: Path, tmp: Path, prompt: str, max_new: int) -> str:
    """`zoo.predict`'s greedy continuation of `prompt` (without the prompt)."""
    from zoo.predict import predict

    cfg = compose_config([f"ckpt_path={run}", f"prompt={prompt}", f"max_new_tokens={max_new}", "temperature=0"],
                         output_dir=tmp / "pred", config_name="predict")  # fmt: skip
    (text,) = predict(cfg)
    return text[len(prompt) :]


# -- in process: the batched decoder against one-at-a-time generation ------------------------------------
@pytest.mark.parametrize("rope", [False, True])
def test_left_padded_batch_decodes_like_each_row_alone(rope):
    """Rows of different lengths, some joining while others decode and leaving at different steps, give
    the greedy tokens each gives alone through GPT.generate (learned positions and RoPE)."""
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=40, block_size=48, n_layer=2, n_head=2, n_embd=32, rope=rope)).eval()
    prompts = [[1, 2, 3], [5], [7, 8, 9, 10, 11, 12, 13], [4, 4], [30, 31, 32, 33]]
    steps = [12, 5, 9, 15, 7]
    alone = [
        net.generate(torch.tensor([p]), n, temperature=0)[0, len(p) :].tolist()
        for p, n in zip(prompts, steps)
    ]

    def row(i: int) -> Row:
        return Row(str(i), prompts[i], steps[i], 0.0, None, 1.0, [], torch.Generator())

    batch, got = DecodeBatch(net), {}
    joining = {0: [0, 1], 2: [2, 3], 4: [4]}  # step -> rows that arrive then
    with torch.no_grad():
        for t in range(40):
            rows, parts = [], []
            if batch.rows:
                rows += batch.rows
                parts.append(batch.step())
            new = [row(i) for i in joining.get(t, [])]
            if new:
                rows += new
                parts.append(batch.admit(new))
            if not rows:
                break
            logits = torch.cat(parts)
            alive = []
            for b, r in enumerate(rows):
                r.tokens.append(int(logits[b].argmax()))
                if len(r.tokens) < r.max_tokens:
                    alive.append(b)
                else:
                    got[int(r.uid)] = r.tokens
            batch.keep(alive)
    assert [got[i] for i in range(len(prompts))] == alone


# -- a server ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_openai_client_greedy_equals_predict_streaming_and_not(server, trained, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=30, max_retries=0)
    expect = predicted(trained, tmp_path, "abc", 12)
    done = client.completions.create(model="zoo-gpt", prompt="abc", max_tokens=12, temperature=0)
    assert done.object == "text_completion" and done.choices[0].text == expect
    assert done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == len(expect)
    assert done.usage.total_tokens == 3 + len(expect)
    chunks = list(client.completions.create(model="zoo-gpt", prompt="abc", max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expect
    assert len([c for c in chunks if c.choices]) > 1  # streamed in pieces, not in one answer
    assert chunks[-1].usage.completion_tokens == len(expect)
    # A list of prompts: one choice each, in order.
    many = client.completions.create(model="zoo-gpt", prompt=["abc", "ponm"], max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == predicted(trained, tmp_path, "ponm", 6)
    # Stop strings end the text before them; the same seed gives the same sample.
    first = client.completions.create(model="m", prompt="ab", max_tokens=15, temperature=1.0, seed=5)
    again = client.completions.create(model="m", prompt="ab", max_tokens=15, temperature=1.0, seed=5)
    assert first.choices[0].text == again.choices[0].text
    text = first.choices[0].text
    if len(text) > 3:
        stop = text[2:4]
        cut = client.completions.create(
            model="m", prompt="ab", max_tokens=15, temperature=1.0, seed=5, stop=[stop]
        )
        assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    models = client.models.list()
    assert [m.id for m in models.data] == ["zoo-gpt"]
    card = server.request("GET", "/v1/models")[1]["data"][0]
    assert card["family"] == "gpt" and "val/loss" in card["metrics"]


@pytest.mark.slow
def test_concurrent_requests_decode_together_like_alone(server):
    def greedy(prompt: str) -> str:
        status, body = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 18, "temperature": 0})
        assert status == 200, body
        return body["choices"][0]["text"]

    alone = {p: greedy(p) for p in PROMPTS}
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(greedy, PROMPTS * 4))
    assert together == [alone[p] for p in PROMPTS * 4]


@pytest.mark.slow
def test_bad_requests_get_one_line_4xx_naming_the_field_and_the_server_keeps_serving(server):
    path = "/v1/completions"
    cases = [
        ({"prompt": "abc", "max_tokens": 4, "colour": "red"}, "colour"),  # unknown field
        ({"prompt": "abc", "max_tokens": "four"}, "max_tokens"),  # wrong type
        ({"prompt": 42}, "prompt"),
        ({"prompt": ""}, "prompt"),  # empty
        ({"prompt": []}, "prompt"),
        ({"max_tokens": 3}, "prompt"),  # missing
        ({"prompt": "a" * 40, "max_tokens": 2}, "prompt"),  # longer than the context (32)
        ({"prompt": "abc", "max_tokens": 21}, "max_tokens"),  # above the cap (20)
        ({"prompt": "a" * 20, "max_tokens": 20}, "max_tokens"),  # prompt + max_tokens over the context
        ({"prompt": "abc", "temperature": -1}, "temperature"),
        ({"prompt": "abc", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "abc", "top_p": 0}, "top_p"),
        ({"prompt": "☃"}, "prompt"),  # not in the character vocabulary
    ]
    for body, field in cases:
        one_line_error(*server.post(path, body), field)
    one_line_error(*server.post(path, b"{not json"), "body")
    one_line_error(*server.post(path, [1, 2]), "body")
    status, body = server.post(path, {"prompt": "a" * 3000})  # body above max_body_bytes=2000
    assert status == 413
    one_line_error(status, body, "body")
    status, body = server.request("GET", "/v1/nothing")
    one_line_error(status, body, None)
    status, body = server.post(path, {"prompt": "abc", "max_tokens": 5, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


@pytest.mark.slow
def test_sigterm_finishes_the_stream_in_flight_then_exits_0(trained, tmp_path):
    with serving(trained, "max_tokens_cap=30", log_dir=tmp_path) as srv:
        body = json.dumps({"prompt": ["ab"] * 16, "max_tokens": 28, "temperature": 1.0, "seed": 1,
                           "stream": True}).encode()  # fmt: skip
        req = urllib.request.Request(
            srv.url + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        lines: list[str] = []
        with urllib.request.urlopen(req, timeout=30) as resp:
            lines.append(resp.readline().decode())  # the first event: the request is in flight
            stopper = threading.Thread(target=srv.proc.send_signal, args=(signal.SIGTERM,))
            stopper.start()
            lines += [line.decode() for line in resp]
            stopper.join()
        assert srv.proc.wait(timeout=60) == 0
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert lines[-2].strip() == "data: [DONE]" or lines[-1].strip() == "data: [DONE]"
        finished = {c["index"] for e in events for c in e["choices"] if c["finish_reason"]}
        assert finished == set(range(16))
        assert "server stopped" in srv.log.read_text()


@pytest.mark.slow
def test_onnx_backend_serves_the_export_like_torch(trained, server, tmp_path):
    """backend=onnx (model.onnx of an export folder, onnxruntime) answers greedy requests as torch does."""
    from zoo.core.export import export_run
    from zoo.core.family import load_run

    run = load_run(trained)
    folder = export_run(run.module, tmp_path / "export", run.config, fmt="onnx", run_dir=trained)
    body = {"prompt": ["abc", "ponmlk"], "max_tokens": 10, "temperature": 0}
    expect = [c["text"] for c in server.post("/v1/completions", body)[1]["choices"]]
    with serving(folder, "backend=onnx", log_dir=tmp_path) as srv:
        status, answer = srv.post("/v1/completions", body)
        assert status == 200 and [c["text"] for c in answer["choices"]] == expect


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backend=onnx", "backend=onnx needs an export folder"),
        ("port=80", "port=80: expected an integer from 1024 to 65535"),
        ("host=example.org", "host=example.org: expected one of"),
        ("max_batch_size=0", "max_batch_size=0 must be a positive integer"),
        ("batch_timeout=-1", "batch_timeout=-1 must be a number >= 0"),
        ("device=cuda", "device=cuda: zoo.serve runs models on the CPU"),
        ("threads=0", "threads=0 must be a positive integer"),
    ],
)
def test_bad_server_settings_are_refused_in_one_line_before_serving(trained, tmp_path, override, message):
    from zoo.core.errors import ZooError
    from zoo.serve import serve

    cfg = compose_config([f"ckpt_path={trained}", override], output_dir=tmp_path / "s", config_name="serve")
    with pytest.raises(ZooError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        serve(cfg)
    assert "\n" not in str(err.value)
