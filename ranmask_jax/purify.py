"""MaskPure (Ruiz Hubarruby et al. 2024): mask, refill every mask with a masked LM in one forward pass, classify.

``mlm_refill(mlm, classifier_tokenizer)`` is a copy transform for the engine (``SmoothedClassifier(...,
transform=..., transform_params=...)``): in every masked copy each mask token is replaced by the masked LM's top-1
token at that position (``temperature > 0``: a token sampled from its softmax at that temperature instead), all
masks of a copy in the same pass; special tokens are never filled in.

With the argmax refill, mask -> refill -> classify is a deterministic function of the masked copy, so Theorem 1 and
the RanMASK certificate hold unchanged for the purified smoothed classifier (same uniform keep sets, same k):
certify accepts it. A sampled refill is random beyond the keep set and is refused by certify.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class RefillError(ValueError):
    pass


def mlm_refill(mlm_model, mlm_tokenizer, classifier_tokenizer, temperature: float = 0.0,
               mask_share: float | None = None, classifier_vocab_size: int | None = None):
    """``(transform, params)`` for the engine. The masked LM must share the classifier's vocabulary: the same
    tokenizer and, when ``classifier_vocab_size`` is given, the same number of embedding rows (a larger masked LM
    could refill ids the classifier has no embedding for).

    ``mask_share`` (the masking rate rho, say): only the mask positions go through the vocabulary decoder, in chunks
    of ``mask_share`` of a batch's token slots plus a margin (a batch with more masks takes more chunks). The decoder
    costs about as much per position as MiniLM-L6's whole encoder; at rho = 0.3 decoding the
    masks alone makes a MaskPure query 1.24x faster on AG News (docs/BENCHMARKS.md).
    ``None`` decodes every position. Argmax fills are the same either way."""
    from flax import nnx

    if mlm_tokenizer.get_vocab() != classifier_tokenizer.get_vocab():
        raise RefillError("the masked LM's vocabulary differs from the classifier's; MaskPure refills token ids, so "
                          "both must use the same tokenizer")
    if classifier_vocab_size is not None and mlm_model.cfg.vocab_size != classifier_vocab_size:
        raise RefillError(f"the masked LM has {mlm_model.cfg.vocab_size} vocabulary rows and the classifier "
                          f"{classifier_vocab_size}; MaskPure refills token ids, so both must be equal")
    if temperature < 0:
        raise RefillError(f"temperature must be >= 0, got {temperature}")
    mlm_model.eval()
    graphdef, state = nnx.split(mlm_model)
    mask_id = int(classifier_tokenizer.mask_token_id)
    vocab = mlm_model.cfg.vocab_size
    never = np.zeros(vocab, bool)
    never[[i for i in classifier_tokenizer.all_special_ids if i < vocab]] = True
    never = jnp.asarray(never)

    if mask_share is not None and not 0 < mask_share <= 1:
        raise RefillError(f"mask_share must be in (0, 1], got {mask_share}")

    def pick(key, logits):
        logits = jnp.where(never, -jnp.inf, logits)
        if temperature > 0:
            return jax.random.categorical(key, logits / temperature, axis=-1)
        return jnp.argmax(logits, axis=-1)

    def transform(params, key, ids, attn, types):
        model = nnx.merge(graphdef, params)
        is_mask = (ids == mask_id) & (attn > 0)  # [R, T]
        h = model.encoder(ids, attn, types)  # [R, T, D]
        if mask_share is None:
            return jnp.where(is_mask, pick(key, model.decode(h)).astype(ids.dtype), ids), attn, types
        # the mask positions, decoded `cap` at a time in as many chunks as the batch needs: one decode path
        # whatever the batch holds, so a copy's fill never depends on how many masks its neighbours have
        total = ids.size
        cap = min(total, int(np.ceil(mask_share * total)) + ids.shape[0] + 8)
        flat_h, flat_mask = h.reshape(total, -1), is_mask.reshape(-1)
        rank = jnp.cumsum(flat_mask) - 1  # [R * T]: the number of each mask position
        count = flat_mask.sum()

        def chunk(c, out):
            pos = jnp.nonzero(flat_mask & (rank // cap == c), size=cap, fill_value=0)[0]  # [cap]
            fill = pick(jax.random.fold_in(key, c), model.decode(flat_h[pos]))  # [cap]
            pos = jnp.where(jnp.arange(cap) < count - c * cap, pos, total)  # unused slots: dropped
            return out.at[pos].set(fill.astype(ids.dtype), mode="drop")

        out = jax.lax.fori_loop(0, (count + cap - 1) // cap, chunk, ids.reshape(-1))
        return out.reshape(ids.shape), attn, types

    transform.deterministic = temperature == 0
    return transform, state
