"""Masked-language-model fine-tuning (``train.py --task mlm``): the masked LM that BERT-Attack's candidates, the
LM-based mask sampler and MaskPure's refill use.

BERT's objective: of each text's non-special tokens, a fraction ``mlm_probability`` (15%) is selected -- single
tokens, or whole words with ``--whole-word-mask`` (every subword of a selected word) -- and of the selected, 80%
become the mask token, 10% a uniformly random token, 10% stay; the loss is the cross-entropy of the selected
tokens' original ids. Selection and replacement are drawn on the device from ``fold_in(root, step)``, so a resumed
run repeats them. Texts are cut to ``max_len`` tokens (truncation, special tokens kept).

Evaluation (each epoch, and ``mlm_recovery``): a fixed 15% of the dev tokens are all replaced by the mask token and
the model's top-1 / top-5 recovery of the original ids is reported.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ranmask_jax.masking import bucket


@dataclasses.dataclass
class TokenSet:
    """Texts tokenized for MLM (truncated to ``max_len``): concatenated ids and word ids with ``starts``."""

    ids: np.ndarray  # [total] int32
    word_ids: np.ndarray  # [total] int32: word of each token within its text, -1 for special tokens
    types: np.ndarray  # [total] int32
    starts: np.ndarray  # [N + 1]

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def batch(self, idx: np.ndarray, pad_id: int, length: int | None = None) -> dict[str, np.ndarray]:
        t = bucket(int(self.lengths[idx].max())) if length is None else length
        out = {"input_ids": np.full((len(idx), t), pad_id, np.int32), "word_ids": np.full((len(idx), t), -1, np.int32),
               "token_type_ids": np.zeros((len(idx), t), np.int32), "attention_mask": np.zeros((len(idx), t), np.int32)}
        for row, i in enumerate(idx):
            a, b = self.starts[i], self.starts[i + 1]
            out["input_ids"][row, :b - a] = self.ids[a:b]
            out["word_ids"][row, :b - a] = self.word_ids[a:b]
            out["token_type_ids"][row, :b - a] = self.types[a:b]
            out["attention_mask"][row, :b - a] = 1
        return out


def tokenize(ds, tokenizer, max_len: int) -> TokenSet:
    """Every example's text (and pair) tokenized with truncation to ``max_len``; words from the fast tokenizer's
    word ids (the second text's words numbered after the first's)."""
    ids, words, types, starts = [], [], [], [0]
    for e in ds.examples:
        enc = tokenizer(e.text, e.text_pair, truncation=True, max_length=max_len)
        seq = enc.sequence_ids()
        wid = enc.word_ids()
        offset = 1 + max((w for w, s in zip(wid, seq, strict=True) if s == 0 and w is not None), default=-1)
        ids.append(np.asarray(enc["input_ids"], np.int32))
        words.append(np.array([-1 if w is None else w + (offset if s == 1 else 0) for w, s in zip(wid, seq,
                                                                                                 strict=True)],
                              np.int32))
        types.append(np.asarray(enc.get("token_type_ids") or [0] * len(wid), np.int32))
        starts.append(starts[-1] + len(wid))
    return TokenSet(np.concatenate(ids), np.concatenate(words), np.concatenate(types),
                    np.asarray(starts, np.int64))


def select(key: jax.Array, word_ids: jax.Array, attention_mask: jax.Array, probability: float,
           whole_word: bool) -> jax.Array:
    """Bool ``[B, T]``: the tokens to predict. Special tokens and padding are never selected. ``whole_word``: a
    word is selected with ``probability`` and then all its subwords are."""
    maskable = (word_ids >= 0) & (attention_mask > 0)
    if whole_word:
        u = jax.random.uniform(key, word_ids.shape)  # [B, T]: one draw per (row, word id)
        chosen = jnp.take_along_axis(u, jnp.maximum(word_ids, 0), axis=1) < probability
    else:
        chosen = jax.random.uniform(key, word_ids.shape) < probability
    return chosen & maskable


def corrupt(key: jax.Array, input_ids: jax.Array, selected: jax.Array, mask_id: int, vocab_size: int,
            mask_frac: float = 0.8, random_frac: float = 0.1) -> jax.Array:
    """BERT's 80/10/10: of the selected tokens, ``mask_frac`` become ``mask_id``, ``random_frac`` a uniform random
    token, the rest stay."""
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k1, input_ids.shape)
    rand = jax.random.randint(k2, input_ids.shape, 0, vocab_size, input_ids.dtype)
    out = jnp.where(selected & (u < mask_frac), mask_id, input_ids)
    return jnp.where(selected & (u >= mask_frac) & (u < mask_frac + random_frac), rand, out)


def decode_cap(shape: tuple[int, int], probability: float) -> int:
    """How many selected tokens of a ``[B, T]`` batch are decoded in a training step: the expected share plus a wide
    margin (a selection beyond it is cut, counted in the step's ``dropped_tokens`` metric, and in practice never
    happens: the cap is 1.5x the mean plus 64 even when every position holds a token)."""
    total = shape[0] * shape[1]
    return min(total, int(np.ceil(1.5 * probability * total)) + 64)


def gather_selected(selected: jax.Array, cap: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(positions [cap], valid [cap], dropped)``: flat indices of the first ``cap`` selected tokens (padding
    slots point at token 0 and are not valid) and how many selected tokens did not fit."""
    flat = selected.reshape(-1)
    positions = jnp.nonzero(flat, size=cap, fill_value=0)[0]
    count = flat.sum()
    return positions, jnp.arange(cap) < count, jnp.maximum(count - cap, 0)


def mlm_loss(logits: jax.Array, labels: jax.Array, selected: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over the selected tokens, with their top-1 accuracy."""
    import optax

    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B, T]
    w = selected.astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)
    top1 = (logits.argmax(-1) == labels).astype(jnp.float32)
    return (ce * w).sum() / count, {"accuracy": (top1 * w).sum() / count, "predicted_tokens": w.sum()}


def recovery_counts(logits: jax.Array, labels: jax.Array, selected: jax.Array) -> jax.Array:
    """``[B, 3]``: per row, the selected tokens, of them recovered at top-1, and within the top 5. A token is within
    the top j when fewer than j ids score strictly higher (one pass over the vocabulary, no sort: ``top_k`` over
    [B, T, V] is a full sort on the CPU)."""
    own = jnp.take_along_axis(logits, labels[..., None], axis=-1)  # [B, T, 1]
    higher = (logits > own).sum(-1)  # [B, T]
    hit1, hit5 = higher < 1, higher < 5
    return jnp.stack([selected.sum(1), (hit1 & selected).sum(1), (hit5 & selected).sum(1)], 1).astype(jnp.float32)
