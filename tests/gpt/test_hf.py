"""GPT in and out of Hugging Face transformers: ``format=hf`` exports load with AutoModelForCausalLM /
AutoTokenizer alone and give the zoo's logits, greedy tokens and token ids; ``model.init_from`` starts from a
GPT-2 folder (or a hub id through huggingface_hub's cache) with equal logits, trains, and exports again."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zoo.core.errors import ZooError
from zoo.gpt.hf import load_hf, save_hf
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer

transformers = pytest.importorskip("transformers")
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll: Speak, speak!  é ü — 東京\t"

CONFIGS = {
    "gpt2": dict(),
    "gpt2-nobias-untied-padded-gelu_tanh": dict(bias=False, tie_weights=False, pad_vocab_to=64, activation="gelu_tanh"),
    "neox-rope": dict(rope=True),
    "neox-rope-nobias-relu2-padded-zeroinit": dict(rope=True, bias=False, activation="relu2", pad_vocab_to=64,
                                                   zero_init_proj=True, tie_weights=False),
}  # fmt: skip


def random_net(tokenizer, **kw) -> GPT:
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32, **kw))
    with torch.no_grad():  # move every weight (gains, biases, zero-initialised ones) off its initial value
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return net.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_export_gives_the_zoo_logits_and_greedy_tokens(tmp_path, name):
    tok = ByteTokenizer()
    net = random_net(tok, **CONFIGS[name])
    save_hf(net, tok.to_json(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == (
        "gpt_neox" if net.cfg.rope else "gpt2"
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for length in (1, 7, 24):
            x = torch.randint(0, tok.vocab_size, (3, length), generator=g)
            diff = (hf(x).logits - net(x)).abs().max()
            assert diff <= 1e-4, (length, float(diff))
        prompt = torch.randint(0, 256, (2, 5), generator=g)
        mine = net.generate(prompt, max_new_tokens=15, temperature=0)
        hf.generation_config.eos_token_id = (
            None  # random weights may pick end-of-text: keep going like the zoo
        )
        theirs = hf.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=256)
    assert torch.equal(mine, theirs)


def test_hf_tokenizer_gives_the_zoo_ids(tmp_path):
    text = SAMPLE * 3
    bpe = HFTokenizer.train_bpe([text, "more text to learn merges from, speak speak"], vocab_size=300)
    for tok, sample in ((ByteTokenizer(), SAMPLE), (CharTokenizer.train([SAMPLE], with_eot=True), SAMPLE),
                        (CharTokenizer.train([SAMPLE], with_eot=False), SAMPLE), (bpe, SAMPLE)):  # fmt: skip
        folder = tmp_path / tok.kind / str(tok.vocab_size)
        save_hf(random_net(tok), tok.to_json(), folder)
        hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
        ids = hf_tok(sample)["input_ids"]
        assert ids == tok.encode(sample), tok.kind
        assert hf_tok.decode(ids) == tok.decode(ids) == sample
        if tok.eot_id is not None:
            assert hf_tok.eos_token_id == tok.eot_id


@pytest.mark.parametrize("option", ["qk_norm=True", "logit_softcap=15.0"])
def test_hf_export_refuses_what_the_architecture_cannot_express(tmp_path, option):
    key, value = option.split("=")
    tok = ByteTokenizer()
    net = random_net(tok, **{key: eval(value)})
    with pytest.raises(ZooError, match=rf"model\.net\.{key}=") as err:
        save_hf(net, tok.to_json(), tmp_path)
    assert "\n" not in str(err.value)


def test_families_without_an_hf_export_refuse_format_hf(tmp_path):
    from zoo.core.export import export_run
    from zoo.core.family import ZooModule

    class Other(ZooModule):
        family = "other"

    with pytest.raises(ZooError, match=r"format=hf: the other family exports safetensors, onnx"):
        export_run(Other(), tmp_path, {}, "hf")


def small_gpt2(folder, tok: HFTokenizer, **kw):
    """A random GPT-2 saved by transformers itself (weights and tokenizer), as from the hub."""
    cfg = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2, **kw
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    eot = "<eos>"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tok, eos_token=eot).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def bpe():
    return HFTokenizer.train_bpe(
        [SAMPLE * 20, "the quick brown fox jumps over the lazy dog " * 20], vocab_size=320
    )


def test_init_from_a_gpt2_folder_gives_its_logits(tmp_path, bpe):
    from zoo.gpt.module import GPTModule

    hf = small_gpt2(tmp_path, bpe)
    module = GPTModule(net={"n_layer": 9}, optim={}, vocab_size=bpe.vocab_size, block_size=32,
                       tokenizer_json=bpe.to_json(), init_from=str(tmp_path))  # fmt: skip
    assert module.config.n_layer == 2 and module.config.activation == "gelu_tanh"  # the folder's config wins
    assert module.hparams["init_from"] is None and module.hparams["net"]["n_layer"] == 2
    x = torch.randint(0, bpe.vocab_size, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (module.net.eval()(x) - hf(x).logits).abs().max() <= 1e-4
    # a shorter data context cuts the position table; the logits of the first positions stay the same
    short = GPTModule(net={}, optim={}, vocab_size=bpe.vocab_size, block_size=8, init_from=str(tmp_path))
    with torch.no_grad():
        assert (short.net.eval()(x[:, :8]) - hf(x[:, :8]).logits).abs().max() <= 1e-4


def test_init_from_mismatches_are_one_line_errors(tmp_path, bpe):
    from zoo.gpt.module import GPTModule

    small_gpt2(tmp_path / "gpt2", bpe)
    folder = str(tmp_path / "gpt2")
    cases = [
        (dict(vocab_size=bpe.vocab_size + 1, block_size=8), r"vocabulary of \d+ tokens, the data's has"),
        (
            dict(vocab_size=bpe.vocab_size, block_size=64),
            r"data.block_size=64 is longer than .* n_positions=32",
        ),
        (
            dict(vocab_size=bpe.vocab_size, block_size=8, tokenizer_json=ByteTokenizer().to_json()),
            "tokenizer",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ZooError, match=message) as err:
            GPTModule(net={}, optim={}, init_from=folder, **kwargs)
        assert "\n" not in str(err.value)
    neox = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=128)  # fmt: skip  # Pythia-style: parallel, 25% rotary
    transformers.GPTNeoXForCausalLM(neox).save_pretrained(tmp_path / "neox")
    with pytest.raises(ZooError, match="use_parallel_residual=true"):
        load_hf(str(tmp_path / "neox"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ZooError, match="model_type='llama'"):
        load_hf(str(tmp_path / "other"))


def test_init_from_a_hub_id_reads_huggingface_hubs_cache_offline(tmp_path, bpe, monkeypatch):
    from huggingface_hub import constants

    # The cache layout huggingface_hub writes: models--<org>--<name>/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    commit = "0" * 40
    small_gpt2(repo / "snapshots" / commit, bpe)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg, state, tokenizer_json = load_hf("someone/tiny-gpt2", block_size=16)
    assert (
        cfg.n_layer == 2
        and state["wpe.weight"].shape == (16, 32)
        and json.loads(tokenizer_json)["kind"] == "hf"
    )
    with pytest.raises(ZooError, match="someone/absent.*not fetchable"):
        load_hf("someone/absent")


@pytest.mark.slow
def test_init_from_trains_five_steps_and_exports_back_to_hf(tmp_path, bpe, compose):
    from zoo.core.export import export_run
    from zoo.core.family import load_run
    from zoo.train import train

    folder = tmp_path / "gpt2"
    small_gpt2(folder, bpe)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((SAMPLE + "the quick brown fox jumps over the lazy dog\n") * 40)
    cfg = compose(
        "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "data=gpt/text_file", f"data.path={corpus}", "data.tokenizer=pretrained", f"data.tokenizer_name={folder}",
        "data.block_size=16", "data.batch_size=4", f"model.init_from={folder}", "trainer.max_steps=5",
        "trainer.val_check_interval=5", "trainer.limit_val_batches=2",
    )  # fmt: skip
    value, metrics = train(cfg)
    assert math.isfinite(value)
    run = load_run(tmp_path / "run")  # the run's checkpoint loads without the HF folder's help
    assert run.module.config.n_layer == 2 and run.module.hparams["init_from"] is None
    out = export_run(run.module, tmp_path / "export", run.config, "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    start = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    x = torch.randint(0, bpe.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - run.module.net.eval()(x)).abs().max() <= 1e-4
        assert (hf(x).logits - start(x).logits).abs().max() > 1e-3  # it trained
    back = load_run(out)  # and the zoo reads its HF export back (zoo.json + GPT-2 folder)
    with torch.no_grad():
        assert (back.module.net(x) - hf(x).logits).abs().max() <= 1e-4
