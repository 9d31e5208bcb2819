"""Run directories as the certification, attack, benchmark and experiment runs all read them: the smoothed classifier
a run describes (its rho, max_len, mask side, keep-set sampler and MaskPure refill), its masked LMs, the seeded data
selection, and the checks that let a run resume only on a model that answers the same."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ranmask_jax import distributed
from ranmask_jax.config import SmoothedRunConfig
from ranmask_jax.data import DataError, load_dataset
from ranmask_jax.files import fingerprint_files, read_json
from ranmask_jax.masking import DEFAULT_MIN_KEEP
from ranmask_jax.models import load_pretrained
from ranmask_jax.models.pretrained import resolve
from ranmask_jax.smoothing import SmoothedClassifier, why_uncertifiable

log = logging.getLogger(__name__)


def smoothed_from_run(cfg: SmoothedRunConfig, local: bool = False) -> tuple[SmoothedClassifier, dict]:
    """The smoothed classifier of a run directory, with the run's rho / max_len / mask side unless overridden.
    ``settings["label_names"]`` is the run's label map (None for a model directory that names no labels);
    ``settings["mlms"]`` the masked LMs the smoothed classifier uses, by role (``"lm"``: the keep-set sampler,
    ``"purifier"``: the MaskPure refill), as ``(model, tokenizer)``."""
    model_dir, meta = resolve(cfg.run_dir)
    if meta.get("task") == "mlm":
        raise ValueError(f"{cfg.run_dir} is a masked-LM run (train.py --task mlm); certify and attack a classifier run")
    model, tok, _ = load_pretrained(cfg.run_dir, dtype=cfg.dtype, allow_pickle=cfg.allow_pickle)
    rho = cfg.rho if cfg.rho is not None else meta.get("rho")
    if rho is None:
        raise ValueError(f"{cfg.run_dir} is not a ranmask-jax run (no {Path(cfg.run_dir) / 'ranmask_run.json'}); "
                         "pass --rho")
    # a run keeps the min_keep it was trained with (old runs: 1); k_x always follows masking.keep_count
    settings = {"rho": rho, "min_keep": cfg.min_keep if cfg.min_keep is not None else meta.get("min_keep",
                                                                                                DEFAULT_MIN_KEEP),
                "max_len": cfg.max_len if cfg.max_len is not None else meta.get("max_len", 128),
                "mask_side": cfg.mask_side or meta.get("mask_side", "second")}
    mesh = distributed.make_mesh(local=local)  # local: each process of a multi-process run works on its own texts
    rows = cfg.batch_size or (64 if mesh.devices.flat[0].platform == "cpu" else 256) * mesh.devices.size
    bs = distributed.round_up(rows, mesh.devices.size)
    extra, fingerprints, mlms = _sampling_and_purifier(cfg, tok, settings, model.cfg.vocab_size)
    sc = SmoothedClassifier(model, tok, batch_size=bs, mesh=mesh, **settings, **extra)
    sc.name = f"the model of {cfg.run_dir}"
    names = meta.get("label_names") or _config_label_names(model_dir, sc.num_labels)
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    settings.update(sampling=cfg.sampling, purifier=cfg.purifier,
                    empirical_only=why_uncertifiable(sc.keep_sets, sc.transform) is not None)
    return sc, {**settings, "label_names": names, "model_fingerprint": fingerprint_files(weights + fingerprints),
                "mlms": mlms, "trained_with": trained_with(cfg.run_dir, meta)}


TRAINING_DEFENSES = {"pgd": "PGD", "freelb": "FreeLB", "hotflip": "Adv-HotFlip", "augment": "augmentation",
                     "safer": "SAFER"}


def trained_with(run_dir, meta: dict) -> str | None:
    """The defense a run was trained with (``train.py --defense``), as the tables name it (PGD-10, FreeLB, ...);
    None for ordinary (masked or plain) training."""
    name = meta.get("defense")
    if not name or name == "none":
        return None
    label = TRAINING_DEFENSES.get(name, name)
    config = Path(run_dir) / "train_config.json"
    steps = read_json(config).get("adv_steps") if name == "pgd" and config.exists() else None
    return f"{label}-{steps}" if steps else label


def no_certificate(cfg) -> str:
    why = ("LM-based sampling draws non-uniform keep sets" if cfg.sampling == "lm" else
           "a sampled refill (--refill-temperature > 0) is random beyond the keep set")
    return (f"no certificate: {why}, and Theorem 1 assumes uniform keep sets and a deterministic base classifier; "
            "use --accuracy-only or --predict (empirical only)")


def load_mlm(run: str, cfg) -> tuple:
    """A masked-LM run (``train.py --task mlm``) or model directory: ``(model, tokenizer, weight files)``."""
    mlm_dir, meta = resolve(run)
    if meta and meta.get("task") != "mlm":
        raise ValueError(f"{run} is not a masked-LM run (its ranmask_run.json says task {meta.get('task')!r})")
    model, tok, _ = load_pretrained(run, head="mlm", dtype=cfg.dtype, allow_pickle=cfg.allow_pickle)
    return model, tok, sorted(mlm_dir.glob("*.safetensors"))


def _sampling_and_purifier(cfg: SmoothedRunConfig, tok, settings: dict, vocab_size: int) -> tuple[dict, list, dict]:
    """The engine's keep-set distribution (``--sampling lm --lm RUN``) and copy transform (``--purifier RUN``):
    the classifier's extra arguments, the masked LMs' weight files, and the masked LMs by role."""
    extra, files, mlms = {}, [], {}
    if cfg.sampling == "lm":
        from ranmask_jax.lm_sampling import LMKeepSets, mlm_word_scores

        lm, lm_tok, f = load_mlm(cfg.lm, cfg)
        mlms["lm"] = (lm, lm_tok)
        extra["keep_sets"] = LMKeepSets(settings["rho"], mlm_word_scores(lm, lm_tok, settings["max_len"]),
                                        settings["min_keep"])
        files += f
    if cfg.purifier:
        from ranmask_jax.purify import mlm_refill

        mlm, mlm_tok, f = load_mlm(cfg.purifier, cfg)
        mlms["purifier"] = (mlm, mlm_tok)
        extra["transform"], extra["transform_params"] = mlm_refill(mlm, mlm_tok, tok, cfg.refill_temperature,
                                                                   mask_share=settings["rho"],
                                                                   classifier_vocab_size=vocab_size)
        files += f
    return extra, files, mlms


def _config_label_names(model_dir: Path, num_labels: int) -> list[str] | None:
    """Label names from an HF config's id2label, unless they are the generic LABEL_i."""
    id2label = read_json(model_dir / "config.json").get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(num_labels)]
    generic = all(n == f"LABEL_{i}" or not n for i, n in enumerate(names))
    return None if generic else names


def select_indices(n_total: int, num_examples: int | None, seed: int, grow_from: int | None = None) -> np.ndarray:
    """A seeded random subset (sorted), or everything. ``grow_from``: a smaller ``num_examples`` whose selection
    this one must contain (earlier results on it stay comparable): that selection, plus a seeded draw (a stream apart
    from it) of the rest from the other texts."""
    if num_examples is None or num_examples >= n_total:
        return np.arange(n_total)
    if grow_from is not None and grow_from < num_examples:
        base = select_indices(n_total, grow_from, seed)
        others = np.setdiff1d(np.arange(n_total), base)
        more = np.random.default_rng([seed, 2]).choice(others, size=num_examples - len(base), replace=False)
        return np.sort(np.concatenate([base, more]))
    return np.sort(np.random.default_rng(seed).choice(n_total, size=num_examples, replace=False))


def limit_indices(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """``limit`` of ``indices`` (sorted): the first ``limit`` of a seeded permutation of them, drawn from a stream
    apart from the selection's, so the subsets are nested (limit 50 lies inside limit 80) and uniform over the data."""
    if limit is None or limit >= len(indices):
        return indices
    order = np.random.default_rng([seed, 1]).permutation(len(indices))
    return np.sort(indices[order[:limit]])


def load_for_run(cfg: SmoothedRunConfig, settings: dict, num_labels: int):
    """The dataset split, with labels mapped to the run's label map by name (refused when they do not match)."""
    ds = load_dataset(cfg.dataset, cfg.split, cfg.data_dir, text_field=cfg.text_field, pair_field=cfg.pair_field,
                      label_field=cfg.label_field, label_names=settings["label_names"], encoding=cfg.encoding,
                      multiline_fields=cfg.multiline_fields)
    if ds.num_labels != num_labels:
        raise DataError(f"{ds.source}: {ds.num_labels} labels {ds.label_names} but the model has {num_labels}")
    return ds


def model_probe(sc: SmoothedClassifier, texts: list[str], pairs: list[str | None] | None = None) -> list:
    """The base classifier's raw logits on (up to) the first 4 of ``texts``: kept in a run's config, so a resume on
    weights with another fingerprint can tell rounding (1e-6 on the CPU, ~1e-3 with TF32 GPU matmuls) from another
    model, which moves them far more even where its votes agree."""
    return np.asarray(sc.base_logits(texts[:4], None if pairs is None else pairs[:4]), np.float64).tolist()


def mlm_probe(mlms: dict, texts: list[str], tokens: int = 16) -> dict:
    """Each masked LM's loss on each of the first ``tokens`` tokens of (up to) the first 2 of ``texts``, read
    unmasked, by role: the masked LMs' counterpart of ``model_probe``."""
    out = {}
    for role, (model, tok) in sorted(mlms.items()):
        model.eval()
        losses = []
        for text in texts[:2]:
            ids = jnp.asarray(tok(text, truncation=True, max_length=tokens)["input_ids"], jnp.int32)[None]
            logp = jax.nn.log_softmax(model(ids, jnp.ones_like(ids), jnp.zeros_like(ids)), axis=-1)
            losses.append(np.asarray(-jnp.take_along_axis(logp, ids[..., None], axis=-1)[0, :, 0], np.float64))
        out[role] = [x.tolist() for x in losses]
    return out


def _flat(probe: list) -> np.ndarray:
    """A probe's numbers in one vector (a masked LM's rows can differ in length: texts of fewer tokens)."""
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in probe] or [np.zeros(0)])


def same_probe(stored: dict, now: list, tol: float = 1e-2, mlm_now: dict | None = None) -> float | None:
    """The largest difference between the stored ``model_probe`` and ``now``, and between the stored ``mlm_probe``
    and ``mlm_now`` (None where the run kept neither); ValueError beyond ``tol``."""
    pairs = [("the plain model's logits on the first selected texts", stored.get("model_probe"), now)]
    pairs += [(f"the {role} masked LM's token losses on the first selected texts", before, (mlm_now or {}).get(role))
              for role, before in sorted((stored.get("mlm_probe") or {}).items())]
    worst = None
    for what, before, after in pairs:
        if before is None:
            continue
        same_shape = after is not None and [np.shape(x) for x in before] == [np.shape(x) for x in after]
        diff = float(np.max(np.abs(_flat(before) - _flat(after)), initial=0.0)) if same_shape else float("inf")
        if not diff <= tol:
            raise ValueError(f"{what} moved by {diff:.3g} (tolerance {tol:g})")
        worst = diff if worst is None else max(worst, diff)
    return worst


def same_rows(rows: list[dict], ds) -> None:
    """Every written row (``index``, ``text``, ``label``) is still that example of ``ds``; ValueError naming the
    first that is not."""
    for r in rows:
        i = r["index"]
        ex = ds.examples[i] if 0 <= i < len(ds) else None
        if ex is None or ex.text != r.get("text", ex.text) or ex.label != r.get("label", ex.label):
            raise ValueError(f"the data changed: example {i} of {ds.source} is not the text and label of the row "
                             "written for it; use a new output directory")


def same_counts(rows: list[dict], score, k: int = 3) -> dict:
    """Whether the weights loaded now answer as the ones that wrote ``rows``: redo the first ``k`` rows with their
    own keys and compare the prediction and the vote counts. Float rounding can move a copy that sits on a tie:
    2 + 0.2% of the copies may move per class. Returns what was compared; raises ValueError naming the text that
    differs."""
    worst = 0
    for old, now in zip(rows[:k], score([r["index"] for r in rows[:k]]), strict=True):
        diffs = [abs(a - b) for key in ("counts", "counts0") if old.get(key) is not None and now.get(key) is not None
                 for a, b in zip(old[key], now[key], strict=True)]
        tol = 2 + 0.002 * now["n"]
        if now["prediction"] != old["prediction"] or max(diffs, default=0) > tol:
            raise ValueError(f"text {old['index']}: prediction {now['prediction']} with counts {now['counts']} now, "
                             f"{old['prediction']} with {old['counts']} in the rows (tolerance {tol:g} copies)")
        worst = max(worst, *diffs, 0)
    log.warning("the model weights differ from those that wrote these rows, but they answer the same: the first %d "
                "texts' vote counts differ by at most %d copies; resuming", min(k, len(rows)), worst)
    return {"rows_before": len(rows), "texts_checked": min(k, len(rows)), "max_count_difference": int(worst)}


DISPLAY_NAMES = {"sst2": "SST-2", "ag_news": "AG News", "imdb": "IMDB", "snli": "SNLI",
                 "snli_textfooler": "SNLI (the 1000 pairs TextFooler attacked)"}


def dataset_title(ds) -> str:
    """A dataset's name for tables and plots: the preset's name or the file's basename, and the split."""
    return f"{DISPLAY_NAMES.get(ds.name, ds.name)} {ds.split}"
