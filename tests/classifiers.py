"""Small base classifiers for the engine's tests whose votes split between classes (a tiny random transformer
answers one class for almost every copy, so a check on its votes compares constants)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class Cfg:
    num_labels: int = 2
    max_positions: int = 512


class BagOfWords(nnx.Module):
    """Logits = the sum of a random score vector per token over the copy's tokens (mask tokens included), scaled
    so that which words a copy keeps decides its class (seed 11: the votes of the test texts split)."""

    def __init__(self, vocab_size: int, num_labels: int = 2, seed: int = 11, scale: float = 1.0):
        self.cfg = Cfg(num_labels=num_labels)
        self.table = nnx.Param(scale * jax.random.normal(jax.random.key(seed), (vocab_size, num_labels)))

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        w = attention_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
        return (self.table[...][input_ids] * w).sum(1)  # [B, C]
