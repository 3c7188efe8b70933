"""The GPT family in and out of Hugging Face ``transformers`` (the ``hf`` extra).

Out (`save_hf`, ``python -m zoo.export format=hf``): a folder ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load with no zoo code.

- learned positions -> GPT-2 (``GPT2LMHeadModel``). GPT-2's ``Conv1D`` stores weights [in, out], so every
  matrix is transposed; GPT-2 always has biases, so ``bias=false`` exports zeros (the same function).
- ``rope=true`` -> GPT-NeoX (``GPTNeoXForCausalLM``) with ``use_parallel_residual=false`` (the zoo's
  sequential pre-LN block), ``partial_rotary_factor=1`` (every channel rotated, same frequencies and the same
  half-split rotation), and the fused qkv rows regrouped per head (NeoX: [h0 q k v, h1 q k v, ...], the
  zoo: [q all heads, k all heads, v all heads]).
- ``activation`` gelu / gelu_tanh / relu2 are HF's ``gelu`` / ``gelu_new`` / ``relu2``; ``zero_init_proj``
  is an initialisation only. ``qk_norm`` and ``logit_softcap`` have no counterpart in either architecture
  and are refused in one line naming the option.
- tokenizers as ``tokenizer.json``: a BPE as is; bytes as a merge-free byte-level BPE whose id of each byte
  is the byte (GPT-2's byte-to-unicode alphabet); characters as a merge-free BPE over the zoo's characters,
  one piece per character. The end-of-text token is a special token with the zoo's id.
`save_hf` loads what it wrote back with transformers and refuses the folder unless its logits equal the
zoo network's within `HF_TOLERANCE`.

In (`load_hf`, ``model.init_from=<folder | hub id>``): GPT-2 checkpoints (``gpt2``, ``distilgpt2``, a folder
saved by transformers) and the zoo's own exports; the architecture is read from config.json and anything
the zoo block cannot reproduce (parallel residuals, partial rotary, another MLP width, ...) is refused in one
line. Hub ids go through huggingface_hub's cache; a local folder needs no network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from zoo.core.errors import ZooError
from zoo.gpt.model import GPT, GPTConfig
from zoo.gpt.tokenizer import EOT

HF_TOLERANCE = 1e-4
"""Largest difference between transformers' and the zoo's float32 logits `save_hf` accepts."""
HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}
ZOO_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu2": "relu2"}
# GPTConfig fields the HF architectures reproduce; every other field must be at its default to export.
EXPRESSIBLE = {
    "vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "rope", "rope_base",
    "tie_weights", "pad_vocab_to", "activation", "zero_init_proj",
}  # fmt: skip


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - the hf extra is installed in CI
        raise ZooError("format=hf / model.init_from need transformers: pip install 'zoo[hf]'") from err
    return transformers


# -- out ----------------------------------------------------------------------------------------------
def check_expressible(cfg: GPTConfig) -> None:
    """Refuse, in one line naming the option, a setting neither GPT-2 nor GPT-NeoX can express."""
    defaults = GPTConfig()
    for f in fields(GPTConfig):
        if f.name not in EXPRESSIBLE and getattr(cfg, f.name) != getattr(defaults, f.name):
            raise ZooError(
                f"format=hf: model.net.{f.name}={getattr(cfg, f.name)} has no counterpart in the HF "
                f"architecture ({'GPT-NeoX' if cfg.rope else 'GPT-2'}); expected {getattr(defaults, f.name)} "
                "(use format=safetensors for this model)"
            )


def hf_config(cfg: GPTConfig, eot_id: int | None, tokenizer_json: str | None) -> Any:
    tf = _transformers()
    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_weights, bos_token_id=eot_id,
                  eos_token_id=eot_id, architectures=None)  # fmt: skip
    # Kept in config.json (transformers ignores them): the zoo settings HF has no word for (bias=false,
    # vocabulary padding) and a byte/char tokenizer as the zoo wrote it, restored on the way back in.
    zoo: dict[str, Any] = {"zoo_config": asdict(cfg)}
    if tokenizer_json and json.loads(tokenizer_json)["kind"] in ("byte", "char"):
        zoo["zoo_tokenizer"] = tokenizer_json
    if not cfg.rope:
        return tf.GPT2Config(
            n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_inner=4 * cfg.n_embd, activation_function=HF_ACT[cfg.activation], resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5, **common, **zoo,
        )  # fmt: skip
    return tf.GPTNeoXConfig(
        hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        intermediate_size=4 * cfg.n_embd, hidden_act=HF_ACT[cfg.activation], max_position_embeddings=cfg.block_size,
        use_parallel_residual=False, attention_bias=True, layer_norm_eps=1e-5, attention_dropout=cfg.dropout,
        hidden_dropout=cfg.dropout, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base,
        "partial_rotary_factor": 1.0}, **common, **zoo,
    )  # fmt: skip


def _qkv_to_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows [q heads | k heads | v heads] -> [head 0: q k v | head 1: q k v | ...] (weight or bias)."""
    return t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _qkv_from_neox(t: torch.Tensor, n_head: int) -> torch.Tensor:
    return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def zoo_to_hf_state(net: GPT) -> dict[str, torch.Tensor]:
    """The zoo state dict under HF's names (padding rows of the vocabulary cut, absent biases as zeros)."""
    cfg = net.cfg
    sd = {k: v.detach().cpu().float() for k, v in net.state_dict().items()}
    V, C = cfg.vocab_size, cfg.n_embd

    def bias(key: str, n: int) -> torch.Tensor:
        return sd.get(key, torch.zeros(n))

    out: dict[str, torch.Tensor] = {}
    if not cfg.rope:
        out["transformer.wte.weight"] = sd["wte.weight"][:V]
        out["transformer.wpe.weight"] = sd["wpe.weight"]
        for i in range(cfg.n_layer):
            z, h = f"blocks.{i}.", f"transformer.h.{i}."
            for zn, hn in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[h + hn + ".weight"], out[h + hn + ".bias"] = (
                    sd[z + zn + ".weight"],
                    bias(z + zn + ".bias", C),
                )
            for zn, hn, n in (("attn.qkv", "attn.c_attn", 3 * C), ("attn.proj", "attn.c_proj", C),
                              ("mlp.fc", "mlp.c_fc", 4 * C), ("mlp.proj", "mlp.c_proj", C)):  # fmt: skip
                out[h + hn + ".weight"] = sd[z + zn + ".weight"].t().contiguous()  # Conv1D: [in, out]
                out[h + hn + ".bias"] = bias(z + zn + ".bias", n)
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_f.weight"], bias("ln_f.bias", C)
    else:
        out["gpt_neox.embed_in.weight"] = sd["wte.weight"][:V]
        for i in range(cfg.n_layer):
            z, h = f"blocks.{i}.", f"gpt_neox.layers.{i}."
            for zn, hn in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
                out[h + hn + ".weight"], out[h + hn + ".bias"] = (
                    sd[z + zn + ".weight"],
                    bias(z + zn + ".bias", C),
                )
            out[h + "attention.query_key_value.weight"] = _qkv_to_neox(sd[z + "attn.qkv.weight"], cfg.n_head)
            out[h + "attention.query_key_value.bias"] = _qkv_to_neox(
                bias(z + "attn.qkv.bias", 3 * C), cfg.n_head
            )
            for zn, hn, n in (("attn.proj", "attention.dense", C), ("mlp.fc", "mlp.dense_h_to_4h", 4 * C),
                              ("mlp.proj", "mlp.dense_4h_to_h", C)):  # fmt: skip
                out[h + hn + ".weight"], out[h + hn + ".bias"] = (
                    sd[z + zn + ".weight"],
                    bias(z + zn + ".bias", n),
                )
        out["gpt_neox.final_layer_norm.weight"] = sd["ln_f.weight"]
        out["gpt_neox.final_layer_norm.bias"] = bias("ln_f.bias", C)
    out["lm_head.weight"] = sd["lm_head.weight"][:V] if "lm_head.weight" in sd else sd["wte.weight"][:V]
    return out


def hf_tokenizer_object(tokenizer_json: str):
    """The zoo tokenizer (its JSON string) as a `tokenizers.Tokenizer` giving the same ids."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    spec = json.loads(tokenizer_json)
    if spec["kind"] == "hf":
        return HFTok.from_str(spec["tokenizer"])
    if spec["kind"] == "byte":
        alphabet = bytes_to_unicode()
        tok = HFTok(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    elif spec["kind"] == "char":
        tok = HFTok(models.BPE(vocab={c: i for i, c in enumerate(spec["chars"])}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        if not spec["eot"]:
            return tok
    else:
        raise ZooError(f"unknown tokenizer kind {spec['kind']!r} in saved tokenizer")
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character of every byte (the alphabet of byte-level BPE)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def save_hf(net: GPT, tokenizer_json: str | None, out_dir: str | Path) -> Path:
    """Write the HF folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) and check
    transformers' logits against the network's."""
    tf = _transformers()
    tf.utils.logging.disable_progress_bar()  # one line per export, not four progress bars
    net = getattr(net, "_orig_mod", net)
    cfg = net.cfg
    check_expressible(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "model.safetensors", "config.json"):
        (out / stale).unlink(missing_ok=True)
    tok = hf_tokenizer_object(tokenizer_json) if tokenizer_json else None
    eot = None
    if tok is not None:
        eot = next((t for t in (EOT, "<|endoftext|>") if tok.token_to_id(t) is not None), None)
    config = hf_config(cfg, tok.token_to_id(eot) if eot else None, tokenizer_json)
    model_cls = tf.GPTNeoXForCausalLM if cfg.rope else tf.GPT2LMHeadModel
    hf = model_cls(config)
    missing, unexpected = hf.load_state_dict(zoo_to_hf_state(net), strict=False)
    tied = {"lm_head.weight"} if cfg.tie_weights else set()
    if unexpected or set(missing) - tied - {k for k in missing if k.endswith("attn.bias")}:
        raise ZooError(
            f"format=hf: weights do not map onto {model_cls.__name__} (missing {missing}, unexpected {unexpected})"
        )
    hf.save_pretrained(out)
    if tok is not None:
        fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eot, bos_token=eot, pad_token=eot)
        fast.save_pretrained(out)
    check_against(net, out)
    return out


@torch.no_grad()
def check_against(net: GPT, folder: Path) -> float:
    """Load `folder` with AutoModelForCausalLM and refuse it unless its logits match `net`'s."""
    tf = _transformers()
    hf = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    was_training, device = net.training, next(net.parameters()).device
    net.eval().cpu()
    try:
        x = torch.randint(
            0, net.cfg.vocab_size, (2, net.cfg.block_size), generator=torch.Generator().manual_seed(0)
        )
        diff = float((hf(x).logits - net.float()(x)).abs().max())
    finally:
        net.to(device).train(was_training)
    if not diff <= HF_TOLERANCE:
        raise ZooError(f"{folder}: transformers' logits differ from the zoo network's by {diff:.3g}")
    return diff


# -- in -----------------------------------------------------------------------------------------------
def resolve(name_or_path: str) -> Path:
    """A local folder as is; otherwise a hub id fetched into (or found in) huggingface_hub's cache."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists() or name_or_path.startswith((".", "/", "~")):
        raise ZooError(f"model.init_from={name_or_path}: not a folder with config.json (or a HF hub id)")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception as err:  # offline without a cached copy, unknown repo, ...
        raise ZooError(
            f"model.init_from={name_or_path}: not a local folder and not fetchable from the HF hub "
            f"({type(err).__name__}); pass a folder saved by transformers"
        ) from err


def zoo_config_from_hf(hf: dict[str, Any], where: str) -> GPTConfig:
    """The GPTConfig reproducing a GPT-2 or GPT-NeoX config.json; one-line ZooError for anything else."""
    kind = hf.get("model_type")
    saved = {
        k: v for k, v in (hf.get("zoo_config") or {}).items() if k in {f.name for f in fields(GPTConfig)}
    }

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ZooError(f"{where}: {what}; the zoo GPT block cannot reproduce it")

    if kind == "gpt2":
        C = hf["n_embd"]
        act = hf.get("activation_function", "gelu_new")
        need(act in ZOO_ACT, f"activation_function={act} (expected gelu, gelu_new or relu2)")
        need(hf.get("n_inner") in (None, 4 * C), f"n_inner={hf.get('n_inner')} (expected {4 * C})")
        need(abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12, "layer_norm_epsilon is not 1e-5")
        need(not hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx=true")
        need(not hf.get("add_cross_attention"), "add_cross_attention=true")
        need(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
        cfg = dict(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                   n_head=hf["n_head"], n_embd=C, rope=False, activation=ZOO_ACT[act],
                   dropout=float(hf.get("resid_pdrop", 0.0)))  # fmt: skip
    elif kind == "gpt_neox":
        C = hf["hidden_size"]
        rope = hf.get("rope_parameters") or {"rope_theta": hf.get("rotary_emb_base", 10000.0),
                                             "partial_rotary_factor": hf.get("rotary_pct", 1.0)}  # fmt: skip
        act = hf.get("hidden_act", "gelu")
        need(act in ZOO_ACT, f"hidden_act={act} (expected gelu, gelu_new or relu2)")
        need(
            hf.get("use_parallel_residual") is False, "use_parallel_residual=true (parallel attention + MLP)"
        )
        need(
            float(rope.get("partial_rotary_factor", 1.0)) == 1.0,
            f"partial_rotary_factor={rope.get('partial_rotary_factor')} (expected 1.0)",
        )
        need(
            rope.get("rope_type", "default") == "default",
            f"rope_type={rope.get('rope_type')} (expected default)",
        )
        need(
            hf.get("intermediate_size") == 4 * C,
            f"intermediate_size={hf.get('intermediate_size')} (expected {4 * C})",
        )
        need(hf.get("attention_bias", True), "attention_bias=false")
        need(abs(hf.get("layer_norm_eps", 1e-5) - 1e-5) < 1e-12, "layer_norm_eps is not 1e-5")
        cfg = dict(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                   n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=C, rope=True,
                   rope_base=float(rope.get("rope_theta", 10000.0)), activation=ZOO_ACT[act],
                   dropout=float(hf.get("hidden_dropout", 0.0)))  # fmt: skip
    else:
        raise ZooError(
            f"{where}: model_type={kind!r}; expected gpt2 (GPT-2 family) or gpt_neox (zoo rope export)"
        )
    cfg["tie_weights"] = bool(hf.get("tie_word_embeddings", True))
    # The zoo's own export says what it was (bias=false, vocabulary padding); others keep GPT-2's biases.
    cfg["bias"] = bool(saved.get("bias", True))
    cfg["pad_vocab_to"] = int(saved.get("pad_vocab_to", 1))
    return GPTConfig(**cfg)


def hf_to_zoo_state(
    hf_sd: dict[str, torch.Tensor], cfg: GPTConfig, block_size: int
) -> dict[str, torch.Tensor]:
    """HF weights under the zoo's names: vocabulary rows padded with zeros, the position table cut to
    `block_size`, zero biases dropped where the config has none."""
    V, P = cfg.vocab_size, cfg.padded_vocab_size
    sd = {k.removeprefix("model."): v.float() for k, v in hf_sd.items()}

    def rows(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:V], t.new_zeros(P - V, t.shape[1])]) if P > V else t[:V]

    out: dict[str, torch.Tensor] = {}
    if not cfg.rope:
        pre, names = "transformer.", {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv",
                                      "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}  # fmt: skip
        out["wte.weight"] = rows(sd[pre + "wte.weight"])
        out["wpe.weight"] = sd[pre + "wpe.weight"][:block_size]
        for i in range(cfg.n_layer):
            for hn, zn in names.items():
                w = sd[f"{pre}h.{i}.{hn}.weight"]
                out[f"blocks.{i}.{zn}.weight"] = w.t().contiguous() if w.dim() == 2 else w
                out[f"blocks.{i}.{zn}.bias"] = sd[f"{pre}h.{i}.{hn}.bias"]
        out["ln_f.weight"], out["ln_f.bias"] = sd[pre + "ln_f.weight"], sd[pre + "ln_f.bias"]
        head = "lm_head.weight"
    else:
        pre = "gpt_neox."
        names = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2", "attention.dense": "attn.proj",
                 "mlp.dense_h_to_4h": "mlp.fc", "mlp.dense_4h_to_h": "mlp.proj"}  # fmt: skip
        out["wte.weight"] = rows(sd[pre + "embed_in.weight"])
        for i in range(cfg.n_layer):
            h = f"{pre}layers.{i}."
            for hn, zn in names.items():
                out[f"blocks.{i}.{zn}.weight"] = sd[h + hn + ".weight"]
                out[f"blocks.{i}.{zn}.bias"] = sd[h + hn + ".bias"]
            out[f"blocks.{i}.attn.qkv.weight"] = _qkv_from_neox(
                sd[h + "attention.query_key_value.weight"], cfg.n_head
            )
            out[f"blocks.{i}.attn.qkv.bias"] = _qkv_from_neox(
                sd[h + "attention.query_key_value.bias"], cfg.n_head
            )
        out["ln_f.weight"], out["ln_f.bias"] = (
            sd[pre + "final_layer_norm.weight"],
            sd[pre + "final_layer_norm.bias"],
        )
        head = "lm_head.weight" if "lm_head.weight" in sd else "embed_out.weight"  # older transformers
    if not cfg.tie_weights:
        out["lm_head.weight"] = rows(sd[head])
    if not cfg.bias:
        out = {k: v for k, v in out.items() if not k.endswith(".bias")}
    return out


def load_hf(
    name_or_path: str, block_size: int | None = None, config: GPTConfig | None = None
) -> tuple[GPTConfig, dict[str, torch.Tensor], str | None]:
    """(config, zoo state dict, tokenizer JSON in the zoo's format or None) of a HF folder or hub id.
    `block_size` (the data's) may be shorter than the checkpoint's context (the position table is cut);
    `config` overrides the one derived from config.json (e.g. another vocabulary padding)."""
    from safetensors.torch import load_file

    folder = resolve(name_or_path)
    where = f"model.init_from={name_or_path}"
    if not (folder / "config.json").is_file():
        raise ZooError(f"{where}: {folder} has no config.json (expected a folder saved by transformers)")
    hf_cfg = json.loads((folder / "config.json").read_text())
    cfg = zoo_config_from_hf(hf_cfg, where)
    if block_size is not None:
        if not cfg.rope and block_size > cfg.block_size:
            raise ZooError(
                f"{where}: data.block_size={block_size} is longer than the checkpoint's context "
                f"n_positions={cfg.block_size}; expected data.block_size <= {cfg.block_size}"
            )
        cfg = GPTConfig(**{**asdict(cfg), "block_size": block_size})
    cfg = config or cfg
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ZooError(
            f"{where}: no *.safetensors weights in {folder} (PyTorch .bin files are not read: they can run code)"
        )
    hf_sd: dict[str, torch.Tensor] = {}
    for f in files:
        hf_sd.update(load_file(str(f), device="cpu"))
    try:
        state = hf_to_zoo_state(hf_sd, cfg, cfg.block_size)
    except KeyError as err:
        raise ZooError(f"{where}: weight {err.args[0]} missing from {folder}") from None
    tok_file = folder / "tokenizer.json"
    tokenizer_json = hf_cfg.get("zoo_tokenizer")  # the zoo's byte/char tokenizer of its own export, exactly
    if tokenizer_json is None and tok_file.is_file():
        tokenizer_json = json.dumps({"kind": "hf", "tokenizer": tok_file.read_text()})
    return cfg, state, tokenizer_json


def load_state(net: GPT, state: dict[str, torch.Tensor], where: str) -> GPT:
    """`load_hf`'s state dict into `net` (a tied head comes with the tie); one-line error on a mismatch."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ZooError(
            f"{where}: weights do not fit the model: {str(err).splitlines()[-1].strip()}"
        ) from None
    if unexpected or set(missing) - ({"lm_head.weight"} if net.cfg.tie_weights else set()):
        raise ZooError(f"{where}: weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return net
