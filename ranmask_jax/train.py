"""Masked training of the base classifier f (RanMASK Section 3.3).

Every example of every step gets a fresh random mask at rate rho, drawn on the device inside the jitted step from
``fold_in(root_key, step)``; rho = 0 trains the plain baseline. The run directory holds:

* ``train_config.json`` -- the resolved config (a rerun with a different config is refused);
* ``checkpoints/`` -- orbax checkpoints of {parameters, optimizer state} + progress; a killed run resumes from the
  latest with the same data order, masks and dropout;
* ``metrics.jsonl`` -- one JSON line per log step and per evaluation;
* ``model/`` + ``ranmask_run.json`` -- the best model by dev accuracy, in HF format, so that
  ``load_pretrained(run_dir)`` and transformers both load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ranmask_jax import adversarial, distributed
from ranmask_jax.config import TrainConfig, check_resume_config
from ranmask_jax.data import DataError, Dataset, is_file_dataset, load_dataset
from ranmask_jax.files import error_line, write_text
from ranmask_jax.masking import PAD, EncodedText, UniformKeepSets, bucket, build_masked, check_max_len, encode
from ranmask_jax.models import export_pretrained, load_pretrained
from ranmask_jax.models.pretrained import RUN_META
from ranmask_jax.progress import Heartbeat

log = logging.getLogger(__name__)

# config fields that may change between a run and its resumption (they do not change the trajectory)
SAFER_STREAM = 0x5AFE  # the substitution draws' own random stream under (seed, step)
RESUMABLE_CHANGES = ("data_dir", "log_every", "allow_pickle", "coordinator_address", "num_processes", "process_id")


class TrainingError(RuntimeError):
    pass


def _check_writable(directory: Path) -> None:
    """Fail before the first step, not at the first checkpoint, when checkpoints cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"{directory}: cannot write checkpoints there ({e.strerror or e})") from None


@contextlib.contextmanager
def _quiet_saving():
    """While a checkpoint is written: orbax's background threads log a failed write as ERROR tracebacks, and each
    of them prints "Event loop is closed" as it winds down, before and after the save raises. The raise becomes
    one error line in the caller, so once a save has failed their echoes are held back for the rest of the process;
    nothing is hidden while saves succeed."""
    import sys
    import threading

    absl = logging.getLogger("absl")
    saved = absl.level, threading.excepthook, sys.unraisablehook
    absl.setLevel(logging.CRITICAL)
    threading.excepthook = sys.unraisablehook = lambda *a: None
    yield  # a failed save raises here and the hooks stay quiet: its threads are still winding down
    absl.setLevel(saved[0])
    threading.excepthook, sys.unraisablehook = saved[1], saved[2]


def _check_room(directory: Path, params) -> None:
    """Fail before the first step when the disk cannot hold one checkpoint (parameters and AdamW's two moments)
    and the exported model beside it, uncompressed (orbax compresses, so this is an upper bound)."""
    import shutil

    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    need, free = 4 * size, shutil.disk_usage(directory).free
    if free < need:
        raise OSError(f"{directory}: {free / 2**20:.0f} MiB free, but a checkpoint and the exported model need up to "
                      f"{need / 2**20:.0f} MiB; free some space or choose another --out-dir")


@dataclasses.dataclass
class EncodedSet:
    """A dataset tokenized once, whole (nothing truncated before masking), with word units. The per-slot arrays of
    all texts are concatenated; ``starts[i]:starts[i + 1]`` are text i's slots. ``batch`` pads a batch to the
    bucket of its longest text (or to ``length``)."""

    slots: dict[str, np.ndarray]  # token_ids, token_type_ids, word_index, first_of_word, has_token, segment
    starts: np.ndarray  # [N + 1]
    h: np.ndarray
    k: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Slots per text (tokens of the unmasked text, plus one per word that has no token)."""
        return np.diff(self.starts)

    def batch(self, idx: np.ndarray, pad_id: int, length: int | None = None) -> dict[str, np.ndarray]:
        t = bucket(int(self.lengths[idx].max())) if length is None else length
        fill = {"token_ids": pad_id, "token_type_ids": 0, "word_index": PAD, "first_of_word": False,
                "has_token": False, "segment": -1}
        out = {name: np.full((len(idx), t), fill[name], a.dtype) for name, a in self.slots.items()}
        for row, i in enumerate(idx):
            a, b = self.starts[i], self.starts[i + 1]
            for name, arr in self.slots.items():
                out[name][row, :b - a] = arr[a:b]
        return {**out, "h": self.h[idx], "k": self.k[idx], "labels": self.labels[idx]}


def train_keep_sets(cfg: TrainConfig) -> UniformKeepSets:
    """The keep sets training draws from: the uniform k_x-subsets that certification assumes (same rho, min_keep)."""
    return UniformKeepSets(cfg.rho, cfg.min_keep)


def encode_dataset(ds: Dataset, tokenizer, cfg: TrainConfig) -> EncodedSet:
    encs = [encode(tokenizer, e.text, e.text_pair, mask_side=cfg.mask_side) for e in ds.examples]
    longer = sum(e.num_tokens > cfg.max_len for e in encs)
    if longer:
        log.info("%s/%s: %d of %d texts are longer than max_len=%d tokens: all their words are masked, then each "
                 "masked copy is cut to max_len", ds.name, ds.split, longer, len(encs), cfg.max_len)
    return _encoded_set(encs, ds.examples, cfg)


def encode_examples(examples, tokenizer, cfg: TrainConfig) -> EncodedSet:
    """``encode_dataset`` of a list of ``Example``s (SAFER's substituted batch)."""
    return _encoded_set([encode(tokenizer, e.text, e.text_pair, mask_side=cfg.mask_side) for e in examples],
                        examples, cfg)


def _encoded_set(encs: list[EncodedText], examples, cfg: TrainConfig) -> EncodedSet:
    for enc in encs:
        check_max_len(enc, cfg.max_len)
    fields = {"token_ids": "token_ids", "token_type_ids": "token_type_ids", "word_index": "word_index",
              "first_of_word": "first_of_word", "has_token": "has_token", "segment": "segment"}
    h = np.array([e.h for e in encs], np.int32)
    return EncodedSet(
        slots={name: np.concatenate([getattr(e, attr) for e in encs]) for name, attr in fields.items()},
        starts=np.concatenate([[0], np.cumsum([len(e.token_ids) for e in encs])]).astype(np.int64),
        h=h, k=np.array([train_keep_sets(cfg).k(int(x)) for x in h], np.int32),
        labels=np.array([e.label for e in examples], np.int32))


def mask_batch(key: jax.Array, batch: dict, keep_sets: UniformKeepSets, mask_id: int, pad_id: int, max_len: int):
    """One fresh masked copy per example, cut to ``max_len`` after masking: ``(input_ids, token_type_ids,
    attention_mask)``, each ``[B, min(T, max_len)]``. Each copy keeps ``batch["k"]`` words drawn by ``keep_sets``
    (``sample_traced``; k was computed by the same object). Example i uses ``fold_in(key, i)``, so the masks do not
    depend on how the batch is split over devices."""
    b, t = batch["token_ids"].shape
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    text_fields = ("token_ids", "token_type_ids", "word_index", "first_of_word", "has_token", "segment")

    def one(k, h, kk, *arrays):
        keep = keep_sets.sample_traced(k, h, kk, 1, t)  # [1, T]
        out = build_masked(*arrays, keep=keep, mask_id=mask_id, pad_id=pad_id, max_len=max_len,
                           out_len=min(t, max_len))
        return tuple(o[0] for o in out)

    return jax.vmap(one)(keys, batch["h"], batch["k"], *(batch[f] for f in text_fields))


def epoch_order(seed: int, epoch: int, n: int, lengths: np.ndarray | None = None, batch_size: int = 1,
                group: int = 0) -> np.ndarray:
    """The texts of one epoch in training order, a function of (seed, epoch) alone so that a resumed run repeats it.

    With ``group > 0`` the shuffled order is cut into windows of ``group`` batches, each window is sorted by token
    length and the resulting batches are shuffled again: batches of similar lengths pad to shorter buckets, while
    every text is still seen once per epoch in a random batch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if group <= 0 or lengths is None:
        return order
    window = group * batch_size
    for s in range(0, n, window):
        part = order[s:s + window]
        order[s:s + window] = part[np.argsort(lengths[part], kind="stable")]
    full = n // batch_size * batch_size
    batches = order[:full].reshape(-1, batch_size)[rng.permutation(n // batch_size)]
    return np.concatenate([batches.reshape(-1), order[full:]])


def plain_grads(tr: Trainer, loss, params, rest, inputs: tuple, batch: dict, k_drop: jax.Array):
    """(loss, metrics, parameter gradients) of ``loss(model, inputs, batch)`` with dropout drawn from ``k_drop``."""
    model = nnx.merge(tr.graphdef, params, rest)
    nnx.reseed(model, dropout=k_drop)  # dropout keys from (seed, step): a resumed run repeats them
    (value, aux), grads = nnx.value_and_grad(lambda m: loss(m, inputs, batch), has_aux=True)(model)
    return value, aux, grads


class ClassifierTask:
    """Masked training of the RanMASK base classifier: one fresh masked copy of each text per step (uniform keep
    sets, ``train_keep_sets``), cross-entropy, or with ``--defense`` an adversarial loss on that copy
    (``ranmask_jax.adversarial``); evaluated by the accuracy of f on one masked copy per dev text and of g (a vote
    over ``eval_n`` copies) on the first ``eval_examples``; the kept model is the best by the latter."""

    name = "classification"

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.keep_sets = cfg, train_keep_sets(cfg)
        self.adversary = adversarial.Adversary.from_config(cfg)
        self.safer = None
        if cfg.defense == "safer":
            from ranmask_jax.safer import PerturbationTable

            self.safer = PerturbationTable.load(cfg.safer_table)
        self._eval_logits = self._smoothed = self._candidates = None

    def check(self, train_ds: Dataset) -> None:
        if train_ds.num_labels < 2:
            raise DataError(f"{train_ds.source}: the training data has {train_ds.num_labels} label "
                            f"({', '.join(train_ds.label_names)}); a classifier needs at least two")

    def model_kwargs(self, train_ds: Dataset) -> dict:
        return {"num_labels": train_ds.num_labels}

    def encode(self, ds: Dataset, tokenizer) -> EncodedSet:
        return encode_dataset(ds, tokenizer, self.cfg)

    def host_batch(self, tr: Trainer, idx: np.ndarray, step: int) -> dict:
        """The device batch of training texts ``idx`` at ``step``: as encoded, or with SAFER each text's words
        substituted from the table (a draw of its own per step, from the seed and the step)."""
        if self.safer is None:
            return tr.device_batch(tr.train, idx)
        from ranmask_jax.data import Example

        rng = np.random.default_rng([self.cfg.seed, step, SAFER_STREAM])
        side = self.cfg.mask_side
        drawn = []
        for i in idx:
            e = tr.train_ds.examples[i]
            text, pair = e.text, e.text_pair
            if pair is None or side in ("first", "both"):
                text = self.safer.copies(text, rng, 1)[0]
            if pair is not None and side in ("second", "both"):
                pair = self.safer.copies(pair, rng, 1)[0]
            drawn.append(Example(text, e.label, pair))
        return tr.device_batch(encode_examples(drawn, tr.tokenizer, self.cfg), np.arange(len(idx)))

    def inputs(self, tr: Trainer, batch: dict, key: jax.Array) -> tuple[tuple, jax.Array, dict]:
        """(the model's inputs, the dropout key, extra metrics) of one training step."""
        k_mask, k_drop = jax.random.split(key)
        return mask_batch(k_mask, batch, self.keep_sets, tr.mask_id, tr.pad_id, self.cfg.max_len), k_drop, {}

    def loss(self, model, inputs: tuple, batch: dict) -> tuple[jax.Array, dict]:
        ids, types, attn = inputs
        logits = model(ids, attn, types)  # [B, C]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

    def grads(self, tr: Trainer, params, rest, inputs: tuple, batch: dict, k_drop: jax.Array):
        """(loss, metrics, parameter gradients) of one step: plain cross-entropy, or the defense's."""
        adv = self.adversary
        if adv is None:
            return plain_grads(tr, self.loss, params, rest, inputs, batch, k_drop)

        def apply(p, inp, delta, key):  # the classifier in training mode, dropout from ``key``
            model = nnx.merge(tr.graphdef, p, rest, copy=True)  # fresh variables: called inside inner gradients
            nnx.reseed(model, dropout=key)
            ids, types, attn = inp
            return model(ids, attn, types, word_delta=delta)

        labels, dim = batch["labels"], tr.model_cfg.hidden_size
        if adv.method == "pgd":
            return adversarial.pgd_grads(apply, params, inputs, labels, dim, adv, k_drop)
        if adv.method == "freelb":
            return adversarial.freelb_grads(apply, params, inputs, labels, dim, adv, k_drop)
        ids, _, attn = inputs
        embeddings = nnx.merge(tr.graphdef, params, rest).encoder.embeddings.word_embeddings.embedding[...]
        special = jnp.asarray(sorted(set(tr.tokenizer.all_special_ids)), ids.dtype)
        protected = (attn == 0) | jnp.isin(ids, special)
        return adversarial.hotflip_grads(apply, params, inputs, labels, embeddings, self.candidates(tr), protected,
                                         adv, k_drop)

    def candidates(self, tr: Trainer) -> np.ndarray:
        """HotFlip's candidate tokens (``adversarial.hotflip_candidates``), built once."""
        if self._candidates is None:
            self._candidates = adversarial.hotflip_candidates(tr.tokenizer)
        return self._candidates

    def evaluate(self, tr: Trainer) -> dict:
        """Dev accuracy of f on one masked copy per text, and of g (vote over ``eval_n`` copies) on a fixed
        subset."""
        cfg = self.cfg
        if self._eval_logits is None:  # gathered on every device, so that each process can read all the logits
            def masked_logits(params, rest, batch, key):
                ids, types, attn = mask_batch(key, batch, self.keep_sets, tr.mask_id, tr.pad_id, cfg.max_len)
                return nnx.merge(tr.eval_graphdef, params, rest)(ids, attn, types)

            self._eval_logits = jax.jit(masked_logits, out_shardings=distributed.replicated(tr.mesh))
        correct = 0
        for idx, batch, key in tr.dev_batches():
            logits = np.asarray(self._eval_logits(tr.params, tr.rest, batch, key))
            correct += int((logits[: len(idx)].argmax(-1) == tr.dev.labels[idx]).sum())
        res = {"dev_masked_accuracy": correct / len(tr.dev)}
        if cfg.eval_n > 0 and tr.dev_ds is not None:
            res["dev_smoothed_accuracy"] = self._smoothed_accuracy(tr, tr.eval_key)
        return res

    def _smoothed_accuracy(self, tr: Trainer, key) -> float:
        from ranmask_jax.smoothing import SmoothedClassifier

        # several processes: each evaluates the same dev texts on its own devices (same keys, same answer)
        mesh = tr.mesh if jax.process_count() == 1 else distributed.make_mesh(local=True)
        params, rest = (tr.params, tr.rest) if mesh is tr.mesh else distributed.to_local((tr.params, tr.rest), mesh)
        model = nnx.merge(tr.eval_graphdef, params, rest)
        if self._smoothed is None:  # the copies of many dev texts share each device step
            bs = distributed.round_up(max(self.cfg.batch_size, 64), mesh.devices.size)
            self._smoothed = SmoothedClassifier(model, tr.tokenizer, self.cfg.rho, batch_size=bs,
                                                max_len=self.cfg.max_len, mask_side=self.cfg.mask_side,
                                                keep_sets=self.keep_sets, mesh=mesh)
        else:
            self._smoothed.update_weights(model)
        exs = tr.dev_ds.examples[: self.cfg.eval_examples]
        preds = self._smoothed.predict_many([jax.random.fold_in(key, i) for i in range(len(exs))],
                                            [ex.text for ex in exs], [ex.text_pair for ex in exs], n=self.cfg.eval_n)
        return sum(p.label == ex.label for p, ex in zip(preds, exs, strict=True)) / len(exs)

    def metric(self) -> str:
        return "dev_smoothed_accuracy" if self.cfg.eval_n > 0 else "dev_masked_accuracy"

    def score(self, evaluation: dict) -> float:
        """The dev score that picks the kept model."""
        return evaluation.get("dev_smoothed_accuracy", evaluation["dev_masked_accuracy"])

    def export(self, tr: Trainer, model, step: int, scores: dict, directory: Path) -> dict:
        """Write the model into ``directory``; returns the run's ``ranmask_run.json``."""
        export_pretrained(model, tr.tokenizer, tr.model_cfg.replace(dtype="float32"), directory,
                          label_names=tr.train_ds.label_names)
        cfg = self.cfg
        return {"model_dir": "model", "task": "classification", "defense": cfg.defense, "rho": cfg.rho,
                "min_keep": cfg.min_keep,
                "max_len": cfg.max_len, "mask_side": cfg.mask_side, "dataset": cfg.dataset,
                "label_names": tr.train_ds.label_names, "step": step, "scores": scores, "base_model": cfg.model}


class MLMTask:
    """Masked-LM training (``--task mlm``, for LM-based sampling, MaskPure and BERT-Attack): BERT's 80/10/10
    corruption of a ``mlm_probability`` share of the tokens (whole words with ``whole_word_mask``), loss on those
    alone; evaluated by top-1 / top-5 recovery of a fixed selection of dev tokens."""

    name = "mlm"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._recovery = None

    def check(self, train_ds: Dataset) -> None:
        pass

    def model_kwargs(self, train_ds: Dataset) -> dict:
        return {"head": "mlm"}

    def encode(self, ds: Dataset, tokenizer):
        from ranmask_jax import mlm

        return mlm.tokenize(ds, tokenizer, self.cfg.max_len)

    def inputs(self, tr: Trainer, batch: dict, key: jax.Array) -> tuple[tuple, jax.Array, dict]:
        from ranmask_jax import mlm

        k_sel, k_cor, k_drop = jax.random.split(key, 3)
        selected = mlm.select(k_sel, batch["word_ids"], batch["attention_mask"], self.cfg.mlm_probability,
                              self.cfg.whole_word_mask)
        ids = mlm.corrupt(k_cor, batch["input_ids"], selected, tr.mask_id, tr.model_cfg.vocab_size)
        positions, valid, dropped = mlm.gather_selected(selected, mlm.decode_cap(ids.shape,
                                                                                 self.cfg.mlm_probability))
        return (ids, positions, valid), k_drop, {"dropped_tokens": dropped}

    def grads(self, tr: Trainer, params, rest, inputs: tuple, batch: dict, k_drop: jax.Array):
        return plain_grads(tr, self.loss, params, rest, inputs, batch, k_drop)

    def host_batch(self, tr: Trainer, idx: np.ndarray, step: int) -> dict:
        return tr.device_batch(tr.train, idx)

    def loss(self, model, inputs: tuple, batch: dict) -> tuple[jax.Array, dict]:
        from ranmask_jax import mlm

        ids, positions, valid = inputs  # only the selected tokens go through the decoder over the vocabulary
        logits = model(ids, batch["attention_mask"], batch["token_type_ids"], positions=positions)  # [cap, V]
        return mlm.mlm_loss(logits, batch["input_ids"].reshape(-1)[positions], valid)

    def evaluate(self, tr: Trainer) -> dict:
        """Held-out masked-token recovery: a fixed selection of dev tokens (same keys every epoch) all replaced by
        the mask token; top-1 / top-5 share of their original ids among the model's predictions."""
        from ranmask_jax import mlm

        cfg = self.cfg
        if self._recovery is None:
            def recovery(params, rest, batch, key):
                selected = mlm.select(key, batch["word_ids"], batch["attention_mask"], cfg.mlm_probability,
                                      cfg.whole_word_mask)
                ids = jnp.where(selected, tr.mask_id, batch["input_ids"])
                logits = nnx.merge(tr.eval_graphdef, params, rest)(ids, batch["attention_mask"],
                                                                   batch["token_type_ids"])
                return mlm.recovery_counts(logits, batch["input_ids"], selected)

            self._recovery = jax.jit(recovery, out_shardings=distributed.replicated(tr.mesh))
        totals = np.zeros(3)
        for idx, batch, key in tr.dev_batches():
            per_row = np.asarray(self._recovery(tr.params, tr.rest, batch, key))
            totals += per_row[: len(idx)].sum(0)  # the padding rows do not count
        return {"dev_masked_tokens": int(totals[0]), "dev_top1": totals[1] / max(totals[0], 1),
                "dev_top5": totals[2] / max(totals[0], 1)}

    def metric(self) -> str:
        return "dev_top1"

    def score(self, evaluation: dict) -> float:
        return evaluation["dev_top1"]

    def export(self, tr: Trainer, model, step: int, scores: dict, directory: Path) -> dict:
        export_pretrained(model, tr.tokenizer, tr.model_cfg.replace(dtype="float32"), directory, head="mlm")
        cfg = self.cfg
        return {"model_dir": "model", "task": "mlm", "max_len": cfg.max_len, "dataset": cfg.dataset,
                "mlm_probability": cfg.mlm_probability, "whole_word_mask": cfg.whole_word_mask, "step": step,
                "scores": scores, "base_model": cfg.model}


TASKS = {"classification": ClassifierTask, "mlm": MLMTask}


class Trainer:
    """Holds the model, optimizer and data of one run; ``run()`` trains (resuming if possible). What is trained
    and how it is evaluated and exported is the task's (``ClassifierTask``, ``MLMTask``); the loop, sharding,
    checkpoints and metrics are shared."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.mesh = distributed.make_mesh()
        self.lead = jax.process_index() == 0  # the process that logs, writes metrics and exports the model
        n_dev = self.mesh.devices.size
        if cfg.batch_size % n_dev:
            raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of the {n_dev} devices")
        _check_writable(self.out / "checkpoints")
        started = any(p.name.isdigit() for p in (self.out / "checkpoints").iterdir())
        check_resume_config(self.out / "train_config.json", cfg, RESUMABLE_CHANGES, started, write=self.lead)
        files = {"text_field": cfg.text_field, "pair_field": cfg.pair_field, "label_field": cfg.label_field,
                 "encoding": cfg.encoding, "multiline_fields": cfg.multiline_fields}
        self.train_ds = load_dataset(cfg.dataset, cfg.train_split, cfg.data_dir, **files)
        self.task = TASKS[cfg.task](cfg)
        self.task.check(self.train_ds)
        if cfg.defense == "augment":  # attacks half the texts with the baseline first (resumable), then trains
            from attacks.augment import augmented_train_set

            self.train_ds = augmented_train_set(cfg, self.train_ds)
        self.dev_ds = None
        if cfg.dev_split:
            dev_name = cfg.dev_file or cfg.dataset
            is_file = is_file_dataset(cfg.dataset)
            if is_file and not cfg.dev_file:
                log.info("file dataset without --dev-file: no dev evaluation; the last step's model is kept")
            else:
                self.dev_ds = load_dataset(dev_name, cfg.dev_split, cfg.data_dir, label_names=self.train_ds.label_names,
                                           **files)
        extra = {} if cfg.dropout is None else {"hidden_dropout_prob": cfg.dropout,
                                                 "attention_probs_dropout_prob": cfg.dropout}
        extra.update(self.task.model_kwargs(self.train_ds))
        model, self.tokenizer, mcfg = load_pretrained(cfg.model, seed=cfg.seed, allow_pickle=cfg.allow_pickle,
                                                      dtype=cfg.dtype, **extra)
        self.model_cfg = mcfg
        if mcfg.max_positions < cfg.max_len:
            raise ValueError(f"max_len {cfg.max_len} exceeds the model's {mcfg.max_positions} positions")
        self.mask_id, self.pad_id = int(self.tokenizer.mask_token_id), int(self.tokenizer.pad_token_id)
        self.train = self.task.encode(self.train_ds, self.tokenizer)
        self.dev = self.task.encode(self.dev_ds, self.tokenizer) if self.dev_ds else None
        self.steps_per_epoch = len(self.train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train)} training examples do not fill one batch of {cfg.batch_size}")
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total

        model.train()
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        model.eval()
        self.eval_graphdef = nnx.graphdef(model)
        schedule = optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps else cfg.lr, cfg.lr,
                                                      cfg.warmup_steps, max(self.total_steps, cfg.warmup_steps + 1))
        self.tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                              optax.adamw(schedule, weight_decay=cfg.weight_decay))
        _check_room(self.out / "checkpoints", params)
        self.params = distributed.replicate(params, self.mesh)
        self.opt_state = distributed.replicate(self.tx.init(params), self.mesh)
        self.rest = distributed.replicate(self.rest, self.mesh)
        self.root = jax.random.key(cfg.seed)
        self._train_step = jax.jit(self._step, donate_argnums=(0, 1))

    # -- one step ----------------------------------------------------------------------------------------------
    def _step(self, params, opt_state, rest, batch, key):
        inputs, k_drop, extra = self.task.inputs(self, batch, key)
        loss, aux, grads = self.task.grads(self, params, rest, inputs, batch, k_drop)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **aux, **extra, "grad_norm": optax.tree.norm(grads)}

    def device_batch(self, data, idx: np.ndarray) -> dict:
        """The global batch of texts ``idx`` split over the mesh; each process builds only its own rows, padded to
        the bucket of the longest text of the whole batch."""
        t = bucket(int(data.lengths[idx].max()))
        local = data.batch(idx[distributed.local_rows(len(idx))], self.pad_id, length=t)
        return distributed.global_batch(local, len(idx), self.mesh)

    def evaluate(self) -> dict:
        return self.task.evaluate(self)

    @property
    def eval_key(self) -> jax.Array:
        """The key of every evaluation: the same masks and selections each epoch, so dev scores compare."""
        return jax.random.fold_in(self.root, 2**31 - 1)

    def dev_batches(self):
        """``(rows, device batch, key)`` over the dev set in ``batch_size`` steps; the last batch is padded with
        copies of its first row (``rows`` says which rows count); batch s draws from ``fold_in(eval_key, s)``."""
        n, size = len(self.dev), self.cfg.batch_size
        for s in range(0, n, size):
            idx = np.arange(s, min(s + size, n))
            padded = np.concatenate([idx, np.full(size - len(idx), idx[0])])
            yield idx, self.device_batch(self.dev, padded), jax.random.fold_in(self.eval_key, s)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _manager(self):
        import orbax.checkpoint as ocp

        return ocp.CheckpointManager(self.out.resolve() / "checkpoints",
                                     options=ocp.CheckpointManagerOptions(max_to_keep=self.cfg.keep_checkpoints))

    def _save(self, mgr, step: int, progress: dict) -> None:
        import orbax.checkpoint as ocp

        try:
            with _quiet_saving():
                mgr.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave({"params": self.params, "opt_state": self.opt_state}),
                    progress=ocp.args.JsonSave(progress)))
                mgr.wait_until_finished()
        except Exception as e:  # orbax and tensorstore raise many kinds for a full or failing disk: one line
            raise OSError(f"{self.out / 'checkpoints'}: could not write the checkpoint of step {step} "
                          f"({error_line(e)}); "
                          "the earlier checkpoints are kept and a rerun resumes from the last of them") from None

    def _restore(self, mgr) -> tuple[int, dict]:
        """Resume from the latest readable checkpoint. An unreadable one (a run killed while writing it, a damaged
        disk) is moved to ``corrupt-checkpoints/`` with a warning, and the one before it is tried."""
        import shutil

        import orbax.checkpoint as ocp

        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": self.params, "opt_state": self.opt_state})
        for step in sorted(mgr.all_steps(), reverse=True):
            try:
                got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                progress=ocp.args.JsonRestore()))
            except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
                bad = self.out / "corrupt-checkpoints" / str(step)
                log.warning("checkpoint of step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                            step, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", bad)
                bad.parent.mkdir(exist_ok=True)
                shutil.rmtree(bad, ignore_errors=True)
                shutil.move(str(self.out / "checkpoints" / str(step)), str(bad))
                mgr.reload()
                continue
            self.params = distributed.replicate(got["state"]["params"], self.mesh)
            self.opt_state = distributed.replicate(got["state"]["opt_state"], self.mesh)
            log.info("resumed %s from step %d", self.out, step)
            return step, dict(got["progress"])
        return 0, {"best": None, "best_step": None}

    def _export_best(self, step: int, scores: dict) -> None:
        """Export the model into ``model/`` whole or not at all: written beside it, then swapped in; any failure
        (a full disk) is one error naming the directory, and the earlier model and the checkpoints are kept."""
        if not self.lead:
            return
        import shutil

        final, fresh, old = self.out / "model", self.out / ".model.new", self.out / ".model.old"
        try:
            shutil.rmtree(fresh, ignore_errors=True)
            meta = self.task.export(self, nnx.merge(self.eval_graphdef, self.params, self.rest), step, scores, fresh)
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            fresh.rename(final)
            write_text(self.out / RUN_META, json.dumps(meta, indent=2) + "\n")
            shutil.rmtree(old, ignore_errors=True)
        except Exception as e:  # transformers, safetensors and the OS raise many kinds for a full disk
            shutil.rmtree(fresh, ignore_errors=True)
            if old.exists() and not final.exists():
                old.rename(final)
            raise OSError(f"{final}: could not export the model of step {step} ({error_line(e)}); the checkpoints "
                          "are kept and a rerun resumes from the last of them") from None

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        mgr = self._manager()
        step, progress = self._restore(mgr)
        metrics_file = open(self.out / "metrics.jsonl", "a") if self.lead else None
        last_eval: dict = {}

        def emit(row: dict) -> None:
            if metrics_file is not None:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()

        bar = tqdm(total=self.total_steps, initial=step, desc=f"train rho={cfg.rho}", unit="step",
                   disable=None if self.lead else True, dynamic_ncols=True)
        t0, pending, start_step = time.time(), [], step
        beat = Heartbeat(log, bar)
        order_epoch, order = -1, None
        while step < self.total_steps:
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:  # once per epoch, not per step
                order_epoch, order = epoch, epoch_order(cfg.seed, epoch, len(self.train), self.train.lengths,
                                                        cfg.batch_size, cfg.group_by_length)
            idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
            batch = self.task.host_batch(self, idx, step)
            self.params, self.opt_state, m = self._train_step(self.params, self.opt_state, self.rest, batch,
                                                              jax.random.fold_in(self.root, step))
            step += 1
            pending.append(m)
            bar.update(1)
            epoch_end = step % self.steps_per_epoch == 0 or step == self.total_steps
            if step % cfg.log_every == 0 or epoch_end or step % cfg.checkpoint_every == 0:
                vals = {k: float(np.mean([float(p[k]) for p in pending])) for k in pending[0]}
                pending = []
                if not all(math.isfinite(v) for v in vals.values()):
                    raise TrainingError(f"non-finite training metrics at step {step}: {vals}; the last checkpoint "
                                        "is kept. Lower --lr or check the data.")
                bar.set_postfix(loss=f"{vals['loss']:.4f}")
                emit({"step": step, "epoch": step / self.steps_per_epoch, **vals,
                      "elapsed_s": round(time.time() - t0, 2)})
                if self.lead:
                    beat("step %d/%d  loss %.4f  %.2f s/step", step, self.total_steps, vals["loss"],
                         (time.time() - t0) / (step - start_step))
            if epoch_end:
                if self.dev is not None:
                    last_eval = self.evaluate()
                    score = self.task.score(last_eval)
                    emit({"step": step, "epoch": step / self.steps_per_epoch, **last_eval})
                    log.info("step %d: %s", step, last_eval)
                    if progress["best"] is None or score > progress["best"]:
                        progress.update(best=score, best_step=step)
                        self._export_best(step, last_eval)
                elif step == self.total_steps:
                    self._export_best(step, {})
            if step % cfg.checkpoint_every == 0 or epoch_end:
                self._save(mgr, step, progress)
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if self.lead and not (self.out / RUN_META).exists():  # resumed after the last epoch end without a model export
            self._export_best(step, last_eval)
        metric = self.task.metric()
        return {"steps": step, "kept_model": f"step {progress['best_step']}, the best {metric} "
                f"({progress['best']})" if progress["best"] is not None else "the last step (no dev split)",
                "last_evaluation": last_eval}


def train(cfg: TrainConfig) -> dict:
    """Train a RanMASK base classifier as ``cfg`` says; returns the final/best dev scores."""
    distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    return Trainer(cfg).run()
