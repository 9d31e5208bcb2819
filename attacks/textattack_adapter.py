"""A TextAttack ``ModelWrapper`` for ranmask-jax models, so that TextAttack users can run their own recipes on a
plain or smoothed ranmask-jax classifier. TextAttack is optional (``pip install textattack``) and nothing else in
this project imports it.

    from attacks.textattack_adapter import wrapper_for_run
    model_wrapper = wrapper_for_run("runs/agnews-rho0.9", ensemble="vote", n=100)
    attack = textattack.attack_recipes.DeepWordBugGao2018.build(model_wrapper)

A smoothed wrapper draws fresh copies for every call; TextAttack's goal function caches one answer per distinct
text on its side (its ``query_budget`` / ``model_cache_size`` settings decide how long).
"""

from __future__ import annotations

import numpy as np


def _base_class():
    try:
        from textattack.models.wrappers import ModelWrapper
    except ImportError:
        raise ImportError("the TextAttack adapter needs TextAttack (pip install textattack); the attacks of this "
                          "project (ranmask-attack) do not") from None
    return ModelWrapper


def make_wrapper(scorer, tokenizer):
    """A TextAttack ModelWrapper around any ``list[str] -> np.ndarray[len, C]`` scorer (``attacks.harness``)."""
    base = _base_class()

    class RanmaskWrapper(base):
        def __init__(self):
            self.model = scorer  # TextAttack reads .model for its repr
            self.tokenizer = tokenizer

        def __call__(self, text_input_list, **kwargs):
            texts = [t if isinstance(t, str) else " ".join(t) for t in text_input_list]
            return np.asarray(scorer(texts), np.float64)

        def _tokenize(self, inputs):
            return [self.tokenizer.convert_ids_to_tokens(self.tokenizer(x)["input_ids"]) for x in inputs]

    return RanmaskWrapper()


def wrapper_for_run(run_dir: str, ensemble: str = "vote", n: int = 100, seed: int = 0, **flags):
    """The wrapper of a trained run: ``ensemble="none"`` for the plain model, else the smoothed classifier with
    ``n`` copies per text; ``flags``: any ``SmoothedRunConfig`` field (rho, max_len, purifier, sampling, ...)."""
    import jax

    from attacks.harness import plain_scorer, smoothed_scorer
    from ranmask_jax.config import SmoothedRunConfig
    from ranmask_jax.runs import smoothed_from_run

    sc, _ = smoothed_from_run(SmoothedRunConfig(run_dir=run_dir, **flags))
    scorer = plain_scorer(sc) if ensemble == "none" else smoothed_scorer(sc, jax.random.key(seed), n, ensemble)
    return make_wrapper(scorer, sc.tokenizer)
