"""Adversarial data augmentation, as the original RanMASK code builds it (``classifier.py``, ``augmentation``):
attack a random half of the training texts (those of at least 3 words) with a trained baseline, keep every text
the attack leaves (successful or not: its last text; a text the baseline already gets wrong stays as it is), and
add them to an independent random half of the training set. ``train.py --defense augment --augment-from RUN``
builds this set in ``OUT_DIR/augment/`` (the attack's rows resume like any attack run) and trains on it.

Files: ``to_attack.jsonl`` (the texts attacked, in the order of their training indices), ``attack/`` (the attack
run: one row per text), ``train.jsonl`` (the augmented training set: the kept half, then the attacked texts, with
``source`` = ``kept`` or ``attack`` and the training ``index``). All of it is a function of the seed, the
baseline's weights and the recipe.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ranmask_jax.data import DataError, Dataset, Example
from ranmask_jax.files import write_text
from ranmask_jax.masking import split_words

log = logging.getLogger(__name__)

RECIPES = ("pwws", "deepwordbug", "textfooler")  # those that need nothing but the baseline
MIN_WORDS = 3
_STREAM = 0x61756721  # the augmentation's own random stream under the run's seed


def selection(lengths: np.ndarray, seed: int, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(to_attack, kept)``: training indices, each ``floor(share * N)`` of them, sorted. ``to_attack`` is drawn
    without replacement from the texts of at least 3 words, ``kept`` independently from all texts."""
    n = len(lengths)
    size = int(n * share)
    eligible = np.flatnonzero(np.asarray(lengths) >= MIN_WORDS)
    if len(eligible) < size:
        raise DataError(f"the augmentation attacks {size} texts ({share:g} of {n}) of at least {MIN_WORDS} words, "
                        f"but only {len(eligible)} have that many; lower --augment-share")
    rng = np.random.default_rng([seed, _STREAM])
    to_attack = np.sort(rng.choice(eligible, size=size, replace=False))
    kept = np.sort(rng.choice(n, size=size, replace=False))
    return to_attack, kept


def _jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def augmented_train_set(cfg, train: Dataset) -> Dataset:
    """The augmented training set of ``cfg`` (a ``TrainConfig`` with ``defense == "augment"``): builds or resumes
    the attack of the selected texts with the baseline ``cfg.augment_from``, writes ``train.jsonl``, returns it."""
    import jax

    from attacks.run import AttackConfig, attack_dataset

    if any(e.text_pair is not None for e in train.examples):
        raise DataError(f"{train.source}: the augmentation attacks single texts; sentence pairs are not supported")
    out = Path(cfg.out_dir) / "augment"
    out.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(split_words(e.text)) for e in train.examples])
    to_attack, kept = selection(lengths, cfg.seed, cfg.augment_share)
    names = train.label_names
    _jsonl(out / "to_attack.jsonl", [{"text": train.examples[i].text, "label": names[train.examples[i].label],
                                      "index": int(i)} for i in to_attack])
    rows_file = out / "attack" / "attack.jsonl"
    done = sum(1 for _ in open(rows_file)) if rows_file.exists() else 0
    if jax.process_count() > 1 and done < len(to_attack):
        raise RuntimeError(f"{out}: the augmentation attack runs in one process; build it first with the same "
                           "flags in a single process, then start the multi-process run")
    if done < len(to_attack):
        log.info("augmentation: attacking %d of %d training texts with %s against %s (%d done)", len(to_attack),
                 len(train), cfg.augment_recipe, cfg.augment_from, done)
    acfg = AttackConfig(run_dir=cfg.augment_from, dataset=str(out / "to_attack.jsonl"), split="train",
                        out=str(out / "attack"), recipe=cfg.augment_recipe, ensemble="none", num_examples=None,
                        seed=cfg.seed, oracle="cache", fallback="random")
    summary = attack_dataset(acfg)
    rows = sorted((json.loads(x) for x in open(rows_file)), key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(len(to_attack))):
        raise RuntimeError(f"{rows_file}: expected one row for each of the {len(to_attack)} selected texts")
    examples = [train.examples[i] for i in kept]
    records = [{"text": e.text, "label": names[e.label], "source": "kept", "index": int(i)}
               for i, e in zip(kept, examples, strict=True)]
    for r in rows:
        i = int(to_attack[r["index"]])
        examples.append(Example(r["perturbed_text"], train.examples[i].label))
        records.append({"text": r["perturbed_text"], "label": names[train.examples[i].label], "source": "attack",
                        "index": i, "status": r["status"]})
    _jsonl(out / "train.jsonl", records)
    log.info("augmentation: %d kept + %d attacked texts (%d successful attacks, Boa %.3f of the baseline) in %s",
             len(kept), len(rows), summary["succeeded"], summary["robust_accuracy"], out / "train.jsonl")
    return Dataset(train.name, f"{train.split}+augment", examples, names, str(out / "train.jsonl"))
