"""Certification runs: flushed JSONL rows, resumable, with a summary, a Markdown table and a plot.

``certify.jsonl`` rows: index, label, prediction, correct, counts0 (selection votes), counts (estimation votes), n0,
n, p_lower, beta, beta_mode, h, k, radius (largest certified d under ``--beta``, -1 if none), radius_one (beta = 1,
rigorous), radius_pc (beta = p_c, the paper's), radius_mc (with ``--beta mc``), radius_original (the original code's
convention, radius + 1 when correct), skipped_estimation (the selection copies chose a wrong class, so the n
estimation copies were not run), mode (sampled / exact), seconds (the text's share of the time of its group of
``--texts-per-call`` texts, certified together), text. Rows are written after each group; a rerun with the same
config skips the rows already written, so an interruption loses at most one group. ``summary.json`` / ``table.md``
/ ``certified-accuracy.png`` and ``.pdf`` are recomputed from the rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ranmask_jax import distributed, metrics
from ranmask_jax.config import CertifyConfig, SmoothedRunConfig, check_resume_config
from ranmask_jax.data import DataError, load_dataset
from ranmask_jax.files import RowFile, fingerprint_files, fingerprint_rows, read_json, read_rows
from ranmask_jax.masking import DEFAULT_MIN_KEEP
from ranmask_jax.models import load_pretrained
from ranmask_jax.models.pretrained import resolve
from ranmask_jax.progress import Heartbeat
from ranmask_jax.smoothing import SmoothedClassifier, why_uncertifiable

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("data_dir", "batch_size", "num_examples", "texts_per_call", "coordinator_address",
                     "num_processes", "process_id")


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
    extra, fingerprints, mlms = _sampling_and_purifier(cfg, tok, settings)
    sc = SmoothedClassifier(model, tok, batch_size=bs, mesh=mesh, **settings, **extra)
    names = meta.get("label_names") or _config_label_names(model_dir, sc.num_labels)
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    settings.update(sampling=cfg.sampling, purifier=cfg.purifier,
                    empirical_only=why_uncertifiable(sc.keep_sets, sc.transform) is not None)
    return sc, {**settings, "label_names": names, "model_fingerprint": fingerprint_files(weights + fingerprints),
                "mlms": mlms}


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


def _sampling_and_purifier(cfg: SmoothedRunConfig, tok, settings: dict) -> tuple[dict, list, dict]:
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
                                                                   mask_share=settings["rho"])
        files += f
    return extra, files, mlms


def _config_label_names(model_dir: Path, num_labels: int) -> list[str] | None:
    """Label names from an HF config's id2label, unless they are the generic LABEL_i."""
    id2label = read_json(model_dir / "config.json").get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(num_labels)]
    generic = all(n == f"LABEL_{i}" or not n for i, n in enumerate(names))
    return None if generic else names


def select_indices(n_total: int, num_examples: int | None, seed: int) -> np.ndarray:
    """A seeded random subset (sorted), or everything."""
    if num_examples is None or num_examples >= n_total:
        return np.arange(n_total)
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


def certify_dataset(cfg: CertifyConfig) -> dict:
    """Certify ``cfg.num_examples`` texts of a dataset split; returns the summary (also written to disk).

    Rows stream into ``certify.jsonl`` (append-only, locked: a second run into the same ``--out`` is refused). A
    rerun with the same flags, model weights and data resumes after the last written row. With several processes
    (``--num-processes``), process i certifies every i-th remaining text into ``certify.p<i>.jsonl`` on its own
    devices; when all are done, process 0 merges the rows into ``certify.jsonl`` and writes the summary."""
    from tqdm.auto import tqdm

    distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    rank, world = jax.process_index(), jax.process_count()
    out = Path(cfg.out)
    own = out / ("certify.jsonl" if world == 1 else f"certify.p{rank}.jsonl")
    with RowFile(own) as rowfile:
        sc, settings = smoothed_from_run(cfg, local=world > 1)
        if settings["empirical_only"] and not cfg.accuracy_only:
            raise ValueError(no_certificate(cfg))
        ds = load_for_run(cfg, settings, sc.num_labels)
        indices = select_indices(len(ds), cfg.num_examples, cfg.seed)
        selected = [[int(i), ds.examples[i].text, ds.examples[i].text_pair, ds.examples[i].label] for i in indices]
        probe = model_probe(sc, [t for _, t, _, _ in selected], [p for _, _, p, _ in selected])
        mlm_now = mlm_probe(settings["mlms"], [t for _, t, _, _ in selected])
        score = _scorer(cfg, sc, ds)
        seen = {r["index"]: own.name for r in rowfile.rows}
        others = [r for f in _row_files(out) if f != own for r in read_rows(f, seen=seen)]
        check_resume_config(out / "certify_config.json", cfg, RESUMABLE_CHANGES,
                            started=bool(rowfile.rows or others), write=rank == 0,
                            extra={"model_fingerprint": settings["model_fingerprint"],
                                   "data_fingerprint": fingerprint_rows(selected), "model_probe": probe,
                                   **({"mlm_probe": mlm_now} if mlm_now else {})},
                            same_model=lambda stored: {"probe_difference": same_probe(stored, probe,
                                                                                      mlm_now=mlm_now),
                                                       **same_counts(rowfile.rows + others, score)})
        rows = rowfile.rows + others
        done = {r["index"] for r in rows}
        todo = [int(i) for i in indices if int(i) not in done][rank::world]
        if done:
            log.info("resuming: %d of %d texts already certified", len(done & set(indices.tolist())),
                     len(indices))
        bar = tqdm(total=len(todo), desc="certify", unit="text", disable=None, dynamic_ncols=True)
        beat, t_start = Heartbeat(log, bar), time.perf_counter()
        # this process's rows and all earlier ones, kept up to date below: the log line costs O(1) a text
        n_scored, n_correct = len(rows), sum(bool(r["correct"]) for r in rows)
        step = cfg.texts_per_call
        for j in range(0, len(todo), step):
            beat("%d/%d texts, accuracy of g so far %.1f%%, %.2f s a text", len(done) + j * world, len(indices),
                 100 * n_correct / max(n_scored, 1), (time.perf_counter() - t_start) / max(j, 1))
            group = todo[j:j + step]
            t0 = time.perf_counter()
            new = score(group)
            seconds = round((time.perf_counter() - t0) / len(group), 4)  # each text's share of its group's time
            for row in new:
                rowfile.append({**row, "seconds": seconds})
                n_scored, n_correct = n_scored + 1, n_correct + bool(row["correct"])
            bar.update(len(group))
        bar.close()
    distributed.barrier("certify: every process has written its rows")
    if rank != 0:
        return {"process": rank, "rows_written": len(todo)}
    with RowFile(out / "certify.jsonl") as merged:
        have = {r["index"] for r in merged.rows}
        for f in _row_files(out):
            if f.name == "certify.jsonl":
                continue
            for r in read_rows(f):
                if r["index"] not in have:
                    merged.append(r)
                    have.add(r["index"])
            f.unlink()
        wanted = set(indices.tolist())
        rows = sorted((r for r in merged.rows if r["index"] in wanted), key=lambda r: r["index"])
    return write_summary(out, rows, cfg, settings, ds)


def _scorer(cfg: CertifyConfig, sc: SmoothedClassifier, ds):
    """``score(indices) -> rows``: certify (or, with ``accuracy_only``, classify) the texts at ``indices``, each with
    its own key ``fold_in(seed, index)``, so a text's row does not depend on which others share its device step."""
    root = jax.random.key(cfg.seed)
    # exact mode when enumerating costs no more copies than sampling would: n (certify) or n0 (accuracy only)
    thr = (cfg.n0 if cfg.accuracy_only else cfg.n) if cfg.exact_threshold is None else cfg.exact_threshold

    def score(group: list[int]) -> list[dict]:
        exs = [ds.examples[i] for i in group]
        keys = [jax.random.fold_in(root, i) for i in group]
        if cfg.accuracy_only:
            preds = sc.predict_many(keys, [e.text for e in exs], [e.text_pair for e in exs], n=cfg.n0,
                                    exact_threshold=thr)
            return [{"index": i, "label": ex.label, "prediction": p.label, "correct": p.label == ex.label,
                     "counts": list(p.counts), "n": p.n, "h": p.h, "k": p.k}
                    for i, ex, p in zip(group, exs, preds, strict=True)]
        certs = sc.certify_many(keys, [e.text for e in exs], [e.label for e in exs], [e.text_pair for e in exs],
                                n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, beta=cfg.beta, exact_threshold=thr, n_r=cfg.n_r)
        new = []
        for i, ex, cert in zip(group, exs, certs, strict=True):
            row = {"index": i, **dataclasses.asdict(cert), "n0": cfg.n0,
                   "radius_original": cert.radius + 1 if cert.correct else None, "text": ex.text}
            if ex.text_pair is not None:
                row["text_pair"] = ex.text_pair
            new.append(row)
        return new

    return score


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


def _row_files(out: Path) -> list[Path]:
    """The row files of a run: certify.jsonl and the per-process certify.p<i>.jsonl."""
    return sorted(out.glob("certify.jsonl")) + sorted(out.glob("certify.p*.jsonl"))


DISPLAY_NAMES = {"sst2": "SST-2", "ag_news": "AG News", "imdb": "IMDB", "snli": "SNLI"}


def dataset_title(ds) -> str:
    """A dataset's name for tables and plots: the preset's name or the file's basename, and the split."""
    return f"{DISPLAY_NAMES.get(ds.name, ds.name)} {ds.split}"


def write_summary(out: Path, rows: list[dict], cfg: CertifyConfig, settings: dict, ds) -> dict:
    name = dataset_title(ds)
    if cfg.accuracy_only:
        summary = {"n": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
                   "seconds_total": round(sum(r["seconds"] for r in rows), 2), "rho": settings["rho"],
                   "sampling": settings["sampling"], "purifier": settings["purifier"],
                   "empirical_only": settings["empirical_only"], "config": dataclasses.asdict(cfg)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        how = "".join([", LM-based sampling (empirical only)" if settings["sampling"] == "lm" else "",
                       ", MaskPure refill" if settings["purifier"] else ""])
        (out / "table.md").write_text(f"accuracy of g on {name} ({len(rows)} texts, vote over n0={cfg.n0} copies, "
                                      f"rho={settings['rho']}{how}): {100 * summary['accuracy']:.2f}%\n")
        return summary
    summary = metrics.summarize(rows)
    summary.update(seconds_total=round(sum(r["seconds"] for r in rows), 2),
                   config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("predict", "radius")},
                   rho=settings["rho"], min_keep=settings["min_keep"], max_len=settings["max_len"],
                   purifier=settings["purifier"])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{name}, rho = {settings['rho']}, n0 = {cfg.n0}, n = {cfg.n}, alpha = {cfg.alpha}"
    (out / "table.md").write_text(metrics.markdown_table(summary, title))
    curves = {f"rho = {settings['rho']}, {metrics.BETA_NAMES[b]}": s for b, s in summary["by_beta"].items()}
    metrics.plot_certified_accuracy(curves, out / "certified-accuracy", title=name, n=len(rows))
    return summary


def predict_texts(cfg: CertifyConfig) -> list[dict]:
    """``--predict``: g's label and vote distribution (and radius with ``--radius``) for raw texts."""
    sc, settings = smoothed_from_run(cfg)
    if settings["empirical_only"] and cfg.radius:
        raise ValueError(no_certificate(cfg))
    names = settings["label_names"] or [f"LABEL_{i}" for i in range(sc.num_labels)]
    src = sys.stdin if cfg.predict == "-" else open(cfg.predict, encoding="utf-8")
    results = []
    root = jax.random.key(cfg.seed)
    thr = cfg.n if cfg.exact_threshold is None else cfg.exact_threshold
    with src:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) > 2:
                raise DataError(f"{cfg.predict}:{lineno}: expected a text or premise<TAB>hypothesis")
            text, pair = parts[0], (parts[1] if len(parts) == 2 else None)
            key = jax.random.fold_in(root, lineno)
            try:
                if cfg.radius:  # label, votes and radius from one certificate
                    cert = sc.certify(key, text, None, pair, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, beta=cfg.beta,
                                      exact_threshold=thr, n_r=cfg.n_r)
                else:
                    pred = sc.predict(key, text, pair, n=cfg.n, exact_threshold=thr)
            except ValueError as e:  # empty text, a text with no room beside the special tokens
                raise DataError(f"{cfg.predict}:{lineno}: {e}") from None
            if cfg.radius:
                row = {"line": lineno, "text": text, "label": names[cert.prediction], "label_id": cert.prediction,
                       "votes": dict(zip(names, cert.counts, strict=True)), "n": cert.n, "h": cert.h, "k": cert.k,
                       "n0": sum(cert.counts0) if cert.counts0 else 0, "radius": cert.radius,
                       "beta_mode": cert.beta_mode, "beta": cert.beta, "radius_one": cert.radius_one,
                       "radius_pc": cert.radius_pc, "p_lower": cert.p_lower, "mode": cert.mode}
                if cert.radius_mc is not None:
                    row["radius_mc"] = cert.radius_mc
            else:
                row = {"line": lineno, "text": text, "label": names[pred.label], "label_id": pred.label,
                       "votes": dict(zip(names, pred.counts, strict=True)), "n": pred.n, "h": pred.h, "k": pred.k}
            if pair is not None:
                row["text_pair"] = pair
            print(json.dumps(row), flush=True)
            results.append(row)
    return results
