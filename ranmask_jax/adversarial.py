"""Adversarial training of the base classifier: the empirical defenses RanMASK is compared with (paper, Tables 4
and 5), as the original RanMASK code trains them (``trainer/gradient.py``, ``pgd.py``, ``freelb.py``,
``hotflip.py``).

* **PGD-K** (Madry et al.): a perturbation ``delta`` of the word embeddings (position and type embeddings are added
  after it), started at ``U(-1, 1) * init_mag / sqrt(L * D)`` on the ``L`` tokens of each text (zero when
  ``init_mag`` is 0), raised by ``steps`` normalised gradient steps ``delta += lr * g / ||g||`` (the norm over the
  whole example) and projected back into the ball of radius ``max_norm`` (0: no projection); the model then trains
  on the perturbed batch alone. The ascent's gradients are taken in training mode (dropout on, a fresh dropout mask
  per pass), with the parameters fixed.
* **FreeLB** (Zhu et al.): ``steps`` passes from the random start, each adding the gradient of ``loss / steps`` to
  the parameters' gradient and then moving ``delta`` as PGD does; one optimiser step on the accumulated gradient.
* **Adv-HotFlip** (Ebrahimi et al.): ``steps`` rounds, each scoring every token swap by its first-order gain
  ``(e_v - e_x) . dL/de_x`` over the candidate tokens (alphabetic vocabulary entries, as the original: no synonym
  constraint), and swapping each text's ``floor(change_rate * L)`` best positions to their best tokens; the model
  trains on the clean and the swapped batch together. Special tokens (and the mask token of a masked copy) are
  never swapped; the original swaps and then restores them, which can leave fewer than its count of changes.

* **Adversarial data augmentation** changes the training set, not the loss: ``attacks/augment.py``.
* **SAFER** trains on random substitutions of every word from its perturbation table, a new draw per text and step
  (``ranmask_jax/safer.py``; ``ClassifierTask.host_batch``).

Both the clean input and the perturbed one are what ``ClassifierTask.inputs`` gives: with ``rho > 0`` the defense
applies to the masked copy (the paper's baselines train at ``rho = 0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# augment: a training set, not a loss (attacks/augment.py); safer: random substitutions of the training texts
METHODS = ("pgd", "freelb", "hotflip", "augment", "safer")
NORMS = ("l2", "linf")
# the original code's values (args.py; FreeLB's own from its comments there; PGD-10 in the paper is steps=10)
DEFAULTS = {
    "pgd": {"adv_steps": 3, "adv_lr": 0.3, "adv_init_mag": 0.5, "adv_max_norm": 0.05, "adv_norm": "l2"},
    "freelb": {"adv_steps": 5, "adv_lr": 0.03, "adv_init_mag": 0.05, "adv_max_norm": 0.0, "adv_norm": "l2"},
    "hotflip": {"adv_steps": 3, "adv_change_rate": 0.2},
    "augment": {"augment_from": None, "augment_recipe": "pwws", "augment_share": 0.5},
    "safer": {"safer_table": None},
}
FIELDS = ("adv_steps", "adv_lr", "adv_init_mag", "adv_max_norm", "adv_norm", "adv_change_rate", "augment_from",
          "augment_recipe", "augment_share", "safer_table")


def resolve(defense: str, given: dict) -> dict:
    """The adversary's settings of ``defense``: the given ones over the method's defaults. A setting the method does
    not use, or any setting without a defense, is an error (it would be silently ignored)."""
    if defense == "none":
        extra = [k for k in FIELDS if given.get(k) is not None]
        if extra:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in extra)} "
                             f"{'needs' if len(extra) == 1 else 'need'} --defense ({', '.join(METHODS)})")
        return {}
    if defense not in METHODS:
        raise ValueError(f"defense must be none or one of {', '.join(METHODS)}, got {defense!r}")
    unused = [k for k in FIELDS if given.get(k) is not None and k not in DEFAULTS[defense]]
    if unused:
        raise ValueError(f"--defense {defense} does not use {', '.join('--' + k.replace('_', '-') for k in unused)}")
    out = {k: (given[k] if given.get(k) is not None else v) for k, v in DEFAULTS[defense].items()}
    if defense == "augment":
        from attacks.augment import RECIPES

        if not out["augment_from"]:
            raise ValueError("--defense augment needs --augment-from RUN: the trained baseline that attacks the "
                             "training texts")
        if out["augment_recipe"] not in RECIPES:
            raise ValueError(f"augment_recipe must be one of {', '.join(RECIPES)}, got {out['augment_recipe']!r}")
        if not 0.0 < out["augment_share"] <= 1.0:
            raise ValueError(f"augment_share must be in (0, 1], got {out['augment_share']}")
        return out
    if defense == "safer":
        if not out["safer_table"]:
            raise ValueError("--defense safer needs --safer-table TABLE: a perturbation table "
                             "(experiments/safer_table.py)")
        return out
    if out["adv_steps"] < 1:
        raise ValueError(f"adv_steps must be >= 1, got {out['adv_steps']}")
    if defense == "hotflip":
        if not 0.0 < out["adv_change_rate"] <= 1.0:
            raise ValueError(f"adv_change_rate must be in (0, 1], got {out['adv_change_rate']}")
    else:
        if out["adv_norm"] not in NORMS:
            raise ValueError(f"adv_norm must be l2 or linf, got {out['adv_norm']!r}")
        if out["adv_lr"] <= 0 or out["adv_init_mag"] < 0 or out["adv_max_norm"] < 0:
            raise ValueError("need adv_lr > 0, adv_init_mag >= 0, adv_max_norm >= 0")
    return out


@dataclasses.dataclass(frozen=True)
class Adversary:
    method: str
    steps: int
    lr: float = 0.0
    init_mag: float = 0.0
    max_norm: float = 0.0
    norm: str = "l2"
    change_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> Adversary | None:
        """The adversary of a ``TrainConfig`` (None without one: no defense, or augmentation, which changes the
        training set and not the loss); its fields are already resolved."""
        if cfg.defense in ("none", "augment", "safer"):
            return None
        s = {k: getattr(cfg, k) for k in DEFAULTS[cfg.defense]}
        return cls(method=cfg.defense, **{k.removeprefix("adv_"): v for k, v in s.items()})


# -- the perturbation of the word embeddings (PGD, FreeLB) -------------------------------------------------------------
def _example_norm(x: jax.Array, norm: str) -> jax.Array:
    """Per-example norm over every position and dimension: [B, T, D] -> [B, 1, 1]."""
    flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
    n = jnp.linalg.norm(flat, axis=1) if norm == "l2" else jnp.abs(flat).max(axis=1)
    return n[:, None, None]


def init_delta(key: jax.Array, valid: jax.Array, dim: int, init_mag: float, norm: str) -> jax.Array:
    """The random start ``[B, T, D]``: zero on padding; l2: ``U(-1, 1) * init_mag / sqrt(L * D)`` with ``L`` the
    text's tokens; linf: ``U(-init_mag, init_mag)``; all zero when ``init_mag`` is 0."""
    b, t = valid.shape
    if init_mag <= 0:
        return jnp.zeros((b, t, dim), jnp.float32)
    u = jax.random.uniform(key, (b, t, dim), jnp.float32, -1.0, 1.0) * valid[..., None]
    if norm == "linf":
        return u * init_mag
    length = valid.sum(axis=1).astype(jnp.float32)  # [B]
    return u * (init_mag / jnp.sqrt(length * dim))[:, None, None]


def ascend(delta: jax.Array, grad: jax.Array, lr: float, max_norm: float, norm: str) -> jax.Array:
    """One ascent step ``delta + lr * g / ||g||`` (per example; ``||g||`` floored at 1e-8), then the projection onto
    the ``max_norm`` ball of the same norm (none when ``max_norm`` is 0)."""
    delta = delta + lr * grad / jnp.maximum(_example_norm(grad, norm), 1e-8)
    if max_norm <= 0:
        return delta
    if norm == "linf":
        return jnp.clip(delta, -max_norm, max_norm)
    n = _example_norm(delta, "l2")
    return delta * jnp.where(n > max_norm, max_norm / jnp.maximum(n, 1e-12), 1.0)


# -- the training losses -----------------------------------------------------------------------------------------------
# ``apply(params, inputs, delta, key)`` is the classifier in training mode: logits [B, C] of ``inputs`` = (token ids,
# token types, attention mask), each [B, T], with the word-embedding perturbation ``delta`` ([B, T, D] or None) and
# dropout drawn from ``key``.
Apply = Callable[..., jax.Array]


def _ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (logits.argmax(-1) == labels).mean()


def pgd_delta(apply: Apply, params, inputs, labels, dim: int, adv: Adversary, key: jax.Array) -> jax.Array:
    """PGD's final perturbation (no gradient flows through it to the parameters)."""
    delta = init_delta(jax.random.fold_in(key, 0), inputs[2] > 0, dim, adv.init_mag, adv.norm)

    def step(i, d):
        g = jax.grad(lambda d: _ce(apply(params, inputs, d, jax.random.fold_in(key, i + 1)), labels))(d)
        return ascend(d, g, adv.lr, adv.max_norm, adv.norm)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, adv.steps, step, delta))


def pgd_grads(apply: Apply, params, inputs, labels, dim: int, adv: Adversary, key: jax.Array):
    """(loss, metrics, parameter gradients) of one PGD-K step: the loss on the perturbed batch alone."""
    delta = pgd_delta(apply, params, inputs, labels, dim, adv, key)
    k_final = jax.random.fold_in(key, adv.steps + 1)

    def loss(p):
        logits = apply(p, inputs, delta, k_final)
        return _ce(logits, labels), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, {"accuracy": _accuracy(logits, labels), "delta_norm": _example_norm(delta, adv.norm).mean()}, grads


def freelb_grads(apply: Apply, params, inputs, labels, dim: int, adv: Adversary, key: jax.Array):
    """(loss, metrics, parameter gradients) of one FreeLB step: the mean over its ``steps`` passes of the loss and
    of the parameter gradient, pass ``t`` at the perturbation reached after ``t`` ascent steps."""
    delta = init_delta(jax.random.fold_in(key, 0), inputs[2] > 0, dim, adv.init_mag, adv.norm)

    def one_pass(t, carry):
        d, total, acc, grads = carry
        f = lambda p, d: (lambda lg: (_ce(lg, labels), lg))(apply(p, inputs, d, jax.random.fold_in(key, t + 1)))
        (value, logits), (g_p, g_d) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, d)
        grads = jax.tree.map(lambda a, g: a + g / adv.steps, grads, g_p)
        return (ascend(d, g_d, adv.lr, adv.max_norm, adv.norm), total + value / adv.steps,
                acc + _accuracy(logits, labels) / adv.steps, grads)

    zeros = jax.tree.map(jnp.zeros_like, params)
    _, value, acc, grads = jax.lax.fori_loop(0, adv.steps, one_pass, (delta, 0.0, 0.0, zeros))
    return value, {"accuracy": acc}, grads


# -- HotFlip -----------------------------------------------------------------------------------------------------------
def hotflip_candidates(tokenizer) -> np.ndarray:
    """[V] bool: the vocabulary entries a swap may write, those alphabetic once a subword prefix (``##``, ``Ġ``) is
    dropped, as the original's candidate list; special tokens never. A numpy array, so that the training step can
    hold it as a constant of every shape it is traced at (a jax array made while tracing would leak between
    traces)."""
    vocab = tokenizer.get_vocab()
    out = [False] * max(len(tokenizer), max(vocab.values()) + 1)
    special = set(tokenizer.all_special_ids)
    for piece, i in vocab.items():
        word = piece[2:] if piece.startswith("##") else piece.removeprefix("\u0120")
        out[i] = word.isalpha() and i not in special
    return np.asarray(out, bool)


def hotflip_swap(ids: jax.Array, grad: jax.Array, embeddings: jax.Array, candidates: jax.Array,
                 protected: jax.Array, counts: jax.Array) -> jax.Array:
    """One HotFlip round: token ids ``[B, T]`` with, in each row, the ``counts[b]`` unprotected positions of largest
    first-order gain swapped to their best candidate. ``grad`` [B, T, D] is dL/d(word embedding) at ``ids``;
    ``embeddings`` [V, D] the word-embedding matrix; ``candidates`` [V] bool; ``protected`` [B, T] bool."""
    vocab = candidates.shape[0]
    g_e = jnp.einsum("btd,vd->btv", grad, embeddings[:vocab].astype(grad.dtype))  # [B, T, V]
    current = jnp.take_along_axis(g_e, ids[..., None], axis=-1)  # [B, T, 1]
    gain = jnp.where(candidates, g_e - current, -jnp.inf)
    best_gain, best_token = gain.max(-1), gain.argmax(-1)  # [B, T]
    best_gain = jnp.where(protected, -jnp.inf, best_gain)
    rank = jnp.argsort(jnp.argsort(-best_gain, axis=-1, stable=True), axis=-1)  # 0 = the best position
    swap = (rank < counts[:, None]) & ~protected
    return jnp.where(swap, best_token.astype(ids.dtype), ids)


def hotflip_grads(apply: Apply, params, inputs, labels, embeddings: jax.Array, candidates: jax.Array,
                  protected: jax.Array, adv: Adversary, key: jax.Array):
    """(loss, metrics, parameter gradients) of one Adv-HotFlip step: the loss on the clean and the swapped batch
    together (the mean over 2B rows). ``protected`` [B, T]: the positions never swapped (special tokens, padding)."""
    ids, types, attn = inputs
    valid = attn > 0
    counts = jnp.floor(valid.sum(axis=1) * adv.change_rate).astype(jnp.int32)  # [B]
    zero = jnp.zeros((*ids.shape, embeddings.shape[-1]), jnp.float32)

    def round_(i, cur):
        g = jax.grad(lambda d: _ce(apply(params, (cur, types, attn), d, jax.random.fold_in(key, i)), labels))(zero)
        return hotflip_swap(cur, g, jax.lax.stop_gradient(embeddings), candidates, protected, counts)

    flipped = jax.lax.fori_loop(0, adv.steps, round_, ids)
    both = (jnp.concatenate([ids, flipped]), jnp.concatenate([types, types]), jnp.concatenate([attn, attn]))
    labels2 = jnp.concatenate([labels, labels])
    k_final = jax.random.fold_in(key, adv.steps)

    def loss(p):
        logits = apply(p, both, None, k_final)
        return _ce(logits, labels2), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    b = ids.shape[0]
    changed = ((flipped != ids).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1)).mean()
    return value, {"accuracy": _accuracy(logits[:b], labels), "adv_accuracy": _accuracy(logits[b:], labels),
                   "swapped_share": changed}, grads
