"""Typed configs for the two entry points. Each field carries its help text; the CLIs are generated from them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any


def opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002
    return dataclasses.field(default=default, metadata={"help": help, **kw})


DTYPES = ("float32", "bfloat16", "float16")
SEED_LIMIT = 2**32  # seeds are in [0, 2^32): one 32-bit word of the root PRNG key
MAX_EXACT = 10**7  # the most keep sets exact mode may enumerate (every one is classified: memory and time)


def normal_path(path: str) -> str:
    """A directory flag as one spelling: ``runs/x/`` and ``runs/x`` are the same run (resume compares configs)."""
    return os.path.normpath(path) if path else path


def check_seed(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in [0, 2^32), got {seed}")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_exact_threshold(threshold: int | None) -> None:
    if threshold is not None and not 0 <= threshold <= MAX_EXACT:
        raise ValueError(f"exact_threshold must be in [0, {MAX_EXACT:.0e}] (every enumerated keep set is classified; "
                         f"beyond that, sample), got {threshold}")


@dataclasses.dataclass
class TrainConfig:
    """Masked training of a RanMASK base classifier (paper defaults: AdamW 5e-5, wd 1e-6, clip 1, batch 32,
    cosine decay, 20 epochs)."""

    out_dir: str = opt("", "run directory: checkpoints, metrics.jsonl, the best model (loadable by load_pretrained)")
    model: str = opt("minilm-l6", "starting weights: minilm-l6, a local HF directory, or a hub id")
    dataset: str = opt("sst2", "preset (sst2, ag_news, imdb, snli, snli_textfooler), a .csv/.tsv/.jsonl "
                                        "file, or tfds:/hf: source")
    data_dir: str | None = opt(None, "directory holding the preset datasets (default: $RANMASK_DATA_DIR; without "
                                      "either, sst2 reads the split shipped with the package and ag_news, imdb, "
                                      "snli their hub copies, cached)")
    train_split: str = opt("train", "split to train on")
    dev_split: str | None = opt("dev", "split to evaluate on each epoch (empty: none)")
    dev_file: str | None = opt(None, "for file datasets: a separate file for the dev split")
    text_field: str | None = opt(None, "file datasets: the text column / key (default: text)")
    pair_field: str | None = opt(None, "file datasets: the second text of a pair, if any")
    label_field: str = opt("label", "file datasets: the label column / key")
    encoding: str = opt("utf-8", "file datasets: text encoding (a UTF-8 byte-order mark is dropped)")
    multiline_fields: bool = opt(False, "CSV/TSV files: allow quoted fields that contain line breaks (by default a "
                                        "record spanning lines is an error: usually a stray quote)")
    task: str = opt("classification", "classification (a RanMASK base classifier) or mlm (fine-tune a masked LM on "
                                      "the dataset's texts: for BERT-Attack, LM-based sampling and MaskPure)")
    mlm_probability: float = opt(0.15, "mlm: fraction of tokens (or words) selected for prediction (80% masked, 10% "
                                       "random, 10% kept)")
    whole_word_mask: bool = opt(False, "mlm: select whole words (all their subwords) instead of single tokens")
    mask_side: str = opt("second", "for pairs: which side's words are masked (first, second, both)")
    rho: float = opt(0.3, "masking rate: fraction of words replaced by the mask token (0: plain baseline)")
    min_keep: int = opt(2, "floor on the number of kept words: k_x = max(h - round(h * rho), min(min_keep, h))")
    max_len: int = opt(128, "maximum tokens the model reads: every word is masked, then each masked copy is cut to "
                            "this length")
    batch_size: int = opt(32, "global batch size (a multiple of the number of devices)")
    epochs: int = opt(20, "training epochs")
    group_by_length: int = opt(0, "sort texts by length within windows of this many batches, then shuffle the "
                                  "batches: less padding, faster steps (0: plain shuffle)")
    max_steps: int | None = opt(None, "stop after this many steps (caps epochs; the schedule spans the capped run)")
    lr: float = opt(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = opt(1e-6, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip gradients to this global norm")
    warmup_steps: int = opt(0, "linear warm-up steps before the cosine decay")
    dropout: float | None = opt(None, "override the model's hidden and attention dropout")
    defense: str = opt("none", "adversarial training on top of the masked training (the paper's baselines use it "
                               "with --rho 0): none, pgd (PGD-K on the word embeddings), freelb, hotflip "
                               "(Adv-HotFlip), augment (adversarial data augmentation), safer (random word "
                               "substitutions)")
    adv_steps: int | None = opt(None, "pgd/freelb: ascent steps; hotflip: swap rounds (default: pgd 3 (the paper's "
                                      "PGD-10: 10), freelb 5, hotflip 3)")
    adv_lr: float | None = opt(None, "pgd/freelb: ascent step size on the normalised gradient (default: pgd 0.3, "
                                     "freelb 0.03)")
    adv_init_mag: float | None = opt(None, "pgd/freelb: magnitude of the random start, 0 for none (default: pgd 0.5, "
                                           "freelb 0.05)")
    adv_max_norm: float | None = opt(None, "pgd/freelb: radius of the perturbation ball, 0 for unbounded (default: "
                                           "pgd 0.05, freelb 0)")
    adv_norm: str | None = opt(None, "pgd/freelb: l2 (over the whole text) or linf (default: l2)")
    adv_change_rate: float | None = opt(None, "hotflip: share of each text's tokens swapped per round (default 0.2)")
    augment_from: str | None = opt(None, "augment: the trained baseline run whose attacks make the added texts")
    augment_recipe: str | None = opt(None, "augment: the attack (pwws, deepwordbug, textfooler; default pwws, the "
                                           "original code's)")
    augment_share: float | None = opt(None, "augment: share of the training set attacked, and share kept beside "
                                            "the attacked texts (independent draws; default 0.5)")
    safer_table: str | None = opt(None, "safer: the perturbation table (JSON, experiments/safer_table.py)")
    seed: int = opt(0, "root seed: data order, masks, dropout, head initialisation")
    eval_n: int = opt(16, "masked copies per dev text for the smoothed (vote) accuracy; 0: masked accuracy only")
    eval_examples: int = opt(200, "dev texts used for the smoothed accuracy (the masked accuracy uses all)")
    checkpoint_every: int = opt(200, "save a checkpoint every this many steps (and at each epoch end)")
    keep_checkpoints: int = opt(2, "checkpoints kept on disk")
    log_every: int = opt(10, "log metrics (and check the loss for NaN/inf) every this many steps")
    dtype: str = opt("float32", "compute dtype: float32 or bfloat16")
    allow_pickle: bool = opt(False, "allow loading a pickled pytorch_model.bin (runs code from the file)")
    coordinator_address: str | None = opt(None, "multi-process runs: HOST:PORT of process 0 (default: "
                                                "$JAX_COORDINATOR_ADDRESS; unset: one process)")
    num_processes: int | None = opt(None, "multi-process runs: how many processes (default: $JAX_NUM_PROCESSES)")
    process_id: int | None = opt(None, "multi-process runs: this process's index (default: $JAX_PROCESS_ID)")

    def __post_init__(self):
        if not self.out_dir:
            raise ValueError("out_dir is required")
        self.out_dir = normal_path(self.out_dir)
        if not 0.0 <= self.rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {self.rho}")
        for name in ("batch_size", "epochs", "max_len", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {self.mask_side!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("need lr > 0, weight_decay >= 0, grad_clip > 0")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.eval_n < 0 or self.eval_examples < 0:
            raise ValueError("eval_n and eval_examples must be >= 0")
        if self.group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0, got {self.group_by_length}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")
        if self.task not in ("classification", "mlm"):
            raise ValueError(f"task must be classification or mlm, got {self.task!r}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        check_seed(self.seed)
        check_dtype(self.dtype)
        from ranmask_jax import adversarial

        if self.defense != "none" and self.task != "classification":
            raise ValueError(f"--defense {self.defense} trains a classifier; it does not apply to --task {self.task}")
        for name, value in adversarial.resolve(self.defense, {k: getattr(self, k) for k in adversarial.FIELDS}).items():
            setattr(self, name, value)  # the resolved values are what train_config.json records
        if self.augment_from:
            self.augment_from = normal_path(self.augment_from)
        if self.safer_table:
            self.safer_table = normal_path(self.safer_table)


@dataclasses.dataclass
class SmoothedRunConfig:
    """The smoothed classifier of a trained run and the data split it reads: what certify.py and the attacks share
    (the run's rho / max_len / mask side unless overridden, the keep-set sampler, the MaskPure refill)."""

    run_dir: str = opt("", "a training run directory (or any model directory with --rho)")
    dataset: str = opt("sst2", "preset, file, or tfds:/hf: source")
    data_dir: str | None = opt(None, "directory holding the preset datasets (default: $RANMASK_DATA_DIR; without "
                                      "either, sst2 reads the split shipped with the package and ag_news, imdb, "
                                      "snli their hub copies, cached)")
    split: str = opt("test", "split to read")
    text_field: str | None = opt(None, "file datasets: the text column / key")
    pair_field: str | None = opt(None, "file datasets: the second text of a pair")
    label_field: str = opt("label", "file datasets: the label column / key")
    encoding: str = opt("utf-8", "file datasets: text encoding (a UTF-8 byte-order mark is dropped)")
    multiline_fields: bool = opt(False, "CSV/TSV files: allow quoted fields that contain line breaks")
    rho: float | None = opt(None, "masking rate (default: the run's)")
    min_keep: int | None = opt(None, "floor on kept words (default: the run's)")
    max_len: int | None = opt(None, "maximum tokens the model reads; copies are cut after masking (default: the "
                                    "run's)")
    mask_side: str | None = opt(None, "for pairs: masked side (default: the run's)")
    batch_size: int | None = opt(None, "masked copies per device step (default: 64 per CPU device, 256 per GPU/TPU; "
                                       "on a 2-core CPU 64-row steps certified faster than 256, docs/BENCHMARKS.md)")
    dtype: str = opt("float32", "compute dtype")
    allow_pickle: bool = opt(False, "allow loading a pickled pytorch_model.bin (runs code from the file)")
    sampling: str = opt("uniform", "keep sets: uniform (certifiable) or lm (masked words drawn by a masked LM's "
                                   "surprise, --lm; empirical only: no certificate)")
    lm: str | None = opt(None, "with --sampling lm: the masked-LM run (train.py --task mlm)")
    purifier: str | None = opt(None, "MaskPure: a masked-LM run that refills every mask before classifying "
                                     "(certifiable with the argmax refill)")
    refill_temperature: float = opt(0.0, "with --purifier: 0 refills by argmax; > 0 samples at this temperature "
                                         "(no certificate)")

    def __post_init__(self):
        if not self.run_dir:
            raise ValueError("run_dir is required")
        self.run_dir = normal_path(self.run_dir)
        if getattr(self, "out", ""):
            self.out = normal_path(self.out)
        if self.sampling not in ("uniform", "lm"):
            raise ValueError(f"sampling must be uniform or lm, got {self.sampling!r}")
        if self.sampling == "lm" and not self.lm:
            raise ValueError("--sampling lm needs --lm MLM_RUN (a masked-LM run: train.py --task mlm)")
        if self.lm and self.sampling != "lm":
            raise ValueError("--lm is only used with --sampling lm")
        if self.refill_temperature < 0:
            raise ValueError(f"refill_temperature must be >= 0, got {self.refill_temperature}")
        if self.refill_temperature > 0 and not self.purifier:
            raise ValueError("--refill-temperature needs --purifier")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_keep is not None and self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.rho is not None and not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")
        if self.mask_side is not None and self.mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {self.mask_side!r}")
        check_dtype(self.dtype)
        if hasattr(self, "seed"):
            check_seed(self.seed)


@dataclasses.dataclass
class CertifyConfig(SmoothedRunConfig):
    """Certification of a trained run on a dataset split (paper: n0 = 100, n = 5000, alpha = 0.05)."""

    out: str = opt("", "output directory: certify.jsonl (one row per text), summary.json, table.md, plot.png")
    num_examples: int | None = opt(None, "certify a seeded random subset of this many texts (default: all)")
    seed: int = opt(0, "root seed: the subset and every masked copy")
    n0: int = opt(100, "selection copies (choose g's answer)")
    n: int = opt(5000, "estimation copies (bound its probability)")
    alpha: float = opt(0.05, "1 - confidence level of the Clopper-Pearson bound")
    beta: str = opt("pc", "pc (paper, an estimate), one (rigorous), mc (Monte Carlo estimate)")
    n_r: int = opt(200, "perturbation sets per d for --beta mc")
    plan: str = opt("fixed", "fixed (n0 selection + n estimation copies for every text: the paper's) or sequential "
                             "(copies in blocks until more cannot change the answer or raise the radius, at most n0 + "
                             "n_max, with a bound valid at any stopping point; docs/CERTIFICATE.md)")
    n_max: int = opt(1600, "--plan sequential: estimation copies at most (--n is the fixed plan's)")
    exact_threshold: int | None = opt(None, "enumerate all keep sets when C(h, k) <= this (default: n, or 48 with "
                                            "--plan sequential, or n0 with --accuracy-only; 0: never)")
    texts_per_call: int = opt(16, "texts certified together (their copies share device steps); rows are written "
                                  "after each group, so an interruption loses at most one group (--plan "
                                  "sequential: texts in flight, each row written as its text finishes)")
    accuracy_only: bool = opt(False, "only g's answer from n0 copies per text (accuracy of g), no certificate")
    predict: str | None = opt(None, "classify raw texts from this file ('-': stdin), one per line "
                                    "(pairs: premise<TAB>hypothesis), instead of certifying a dataset")
    radius: bool = opt(False, "with --predict: also certify g's answer and report its radius")
    safer_table: str | None = opt(None, "certify SAFER's smoothed classifier instead of RanMASK's: random substitution "
                                        "copies from this perturbation table (experiments/safer_table.py), each "
                                        "classified unmasked; a text is certified against substitutions of any "
                                        "number of its words (docs/DEFENSES.md)")
    coordinator_address: str | None = opt(None, "multi-process runs: HOST:PORT of process 0 (default: "
                                                "$JAX_COORDINATOR_ADDRESS; unset: one process)")
    num_processes: int | None = opt(None, "multi-process runs: how many processes (default: $JAX_NUM_PROCESSES)")
    process_id: int | None = opt(None, "multi-process runs: this process's index (default: $JAX_PROCESS_ID)")

    def __post_init__(self):
        super().__post_init__()
        if not self.out and self.predict is None:
            raise ValueError("out is required (or use --predict)")
        if self.n0 < 1 or self.n < 1:
            raise ValueError("n0 and n must be >= 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.beta not in ("pc", "one", "mc"):
            raise ValueError(f"beta must be pc, one or mc, got {self.beta!r}")
        if self.plan not in ("fixed", "sequential"):
            raise ValueError(f"plan must be fixed or sequential, got {self.plan!r}")
        if self.n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {self.n_max}")
        if self.plan == "sequential" and self.beta == "mc":
            raise ValueError("--beta mc needs the fixed plan's copies (Monte Carlo beta reads them); the sequential "
                             "plan reports beta = 1 and beta = p_c")
        if self.num_examples is not None and self.num_examples < 1:
            raise ValueError("num_examples must be >= 1")
        for name in ("n_r", "texts_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_exact_threshold(self.exact_threshold)
        if self.safer_table:
            self.safer_table = normal_path(self.safer_table)
            if self.plan != "fixed" or self.predict is not None or self.purifier or self.sampling != "uniform":
                raise ValueError("--safer-table certifies with the fixed plan on a dataset split; it takes neither "
                                 "--plan sequential, --predict, --purifier nor --sampling lm")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, typed from its annotation, with the field's help text."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        base = [a for a in typing.get_args(hint) if a is not type(None)]
        typ = base[0] if base else hint
        help_ = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help strings with %
        if typ is bool:
            parser.add_argument(flag, action="store_true", default=f.default, help=help_)
        elif type(None) in typing.get_args(hint) and typ in (int, float):
            parser.add_argument(flag, type=_or_none(typ), default=f.default, help=help_)
        else:
            parser.add_argument(flag, type=typ, default=f.default, help=help_)


def _or_none(typ: type):
    """An argparse type for an optional number: the number, or "none" (any case) for None."""
    def parse(text: str):
        if text.strip().lower() == "none":
            return None
        return typ(text)

    parse.__name__ = typ.__name__  # argparse names the type in its "invalid int value" message
    return parse


def from_args(cls: type, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})




# a run config's fingerprints of weight files (what they name), and its probes of what those weights answer
WEIGHT_FINGERPRINTS = {"model_fingerprint": "the model weights", "attack_mlm_fingerprint": "the attack's masked LM"}
PROBES = ("model_probe", "mlm_probe")


def check_resume_config(path: str | Path, cfg: Any, may_change: tuple[str, ...], started: bool,
                        extra: dict | None = None, write: bool = True,
                        same_model: Callable[[dict], dict] | None = None,
                        same_data: Callable[[], None] | None = None,
                        legacy: Callable[[dict], dict] | None = None) -> None:
    """Write ``cfg`` (and ``extra``, e.g. fingerprints of the model weights and the data) to ``path``. If a run
    that ``started`` (left checkpoints or rows) wrote one there, refuse a config that differs in any field outside
    ``may_change``: resuming with other settings would silently mix two experiments. A run that failed before
    producing anything does not bind the directory.

    Weights retrained on another machine can differ in their last bits (XLA's CPU and GPU kernels round
    differently) while they are the same model. If only weights' fingerprints (``WEIGHT_FINGERPRINTS``) changed and
    the caller passes ``same_model``, that check decides: given the stored config, it compares the models' outputs
    on a few texts (``model_probe``, ``mlm_probe``, kept in the config; never a difference by themselves) and
    re-asks questions the run already answered, and returns what it compared, or raises ValueError saying how the
    answers differ. Accepted, the earlier fingerprints and the comparison are kept in the config's
    ``earlier_weights``, so the rows say which weights produced them. Likewise ``same_data()`` decides when only
    the selected data rows changed (a resumable flag such as ``num_examples`` selects others): it raises ValueError
    unless every row already written is the same text and label in the data now. ``legacy(stored)`` gives the values
    a run made before a setting existed had, for the keys its config lacks (else a field added later counts as its
    default there, and an extra key it lacks as unknown)."""
    from ranmask_jax.files import read_json

    path = Path(path)
    now = dataclasses.asdict(cfg) | (extra or {})
    if path.exists() and started:
        stored = read_json(path)
        # a config field added after the run started counts as its default there; an extra key it lacks is unknown
        before = {f.name: f.default for f in dataclasses.fields(cfg)} | (legacy(stored) if legacy else {}) | stored
        diff = [k for k in now if k not in (*may_change, *PROBES) and (k in before) and before[k] != now[k]]
        history = list(stored.get("earlier_weights", []))
        if diff and set(diff) <= set(WEIGHT_FINGERPRINTS) and same_model is not None:
            moved = ", ".join(f"{WEIGHT_FINGERPRINTS[k]} changed: {before[k]} -> {now[k]}" for k in diff)
            try:
                checked = same_model(stored)
            except ValueError as e:
                raise ValueError(f"{path.parent} holds a run with a different config ({moved}, and they answer "
                                 f"differently: {e}); use a new output directory") from None
            history.append({**{k: before[k] for k in diff}, **checked})
            diff = []
        if "data_fingerprint" in diff and same_data is not None:
            # another selection (e.g. --num-examples changed): fine while every written row is still the data's
            same_data()
            diff.remove("data_fingerprint")
        if diff:
            what = {**WEIGHT_FINGERPRINTS, "data_fingerprint": "the selected data rows"}
            changes = ", ".join(f"{what[k]} changed" if k in what else f"{k}: {before.get(k)!r} -> {now[k]!r}"
                                for k in diff)
            raise ValueError(f"{path.parent} holds a run with a different config ({changes}); use a new output "
                             "directory, or the same flags, model and data to resume")
        if history:
            now["earlier_weights"] = history
    if write:  # atomically: other processes of the run may be reading it
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(now, indent=2) + "\n")
        os.replace(tmp, path)
