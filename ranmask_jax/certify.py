"""Certification runs: flushed JSONL rows, resumable, with a summary, a Markdown table and a plot.

``certify.jsonl`` rows: index, label, prediction, correct, counts0 (selection votes), counts (estimation votes), n0,
n, p_lower, beta, beta_mode, h, k, radius (largest certified d under ``--beta``, -1 if none), radius_one (beta = 1,
rigorous), radius_pc (beta = p_c, the paper's), radius_mc (with ``--beta mc``), radius_original (the original code's
convention, radius + 1 when correct), skipped_estimation (the selection copies chose a wrong class, so the n
estimation copies were not run), mode (sampled / exact), copies (distinct masked copies classified for the text:
selection and estimation, each classified once however often it was drawn), plan (fixed / sequential), keep_sets
(sequential exact mode: C(h, k), of which n were enumerated), seconds (the text's share of the time
of its group of ``--texts-per-call`` texts, certified together), text. Rows are written after each group; a rerun
with the same config skips the rows already written, so an interruption loses at most one group. ``summary.json``
/ ``table.md`` / ``certified-accuracy.png`` and ``.pdf`` are recomputed from the rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import jax
import numpy as np

from ranmask_jax import distributed, metrics
from ranmask_jax.config import CertifyConfig, check_resume_config
from ranmask_jax.data import DataError, read_lines
from ranmask_jax.engine import NonFiniteLogits
from ranmask_jax.files import RowFile, fingerprint_files, fingerprint_rows, read_rows, write_text
from ranmask_jax.progress import Heartbeat
from ranmask_jax.runs import (
    dataset_title,
    load_for_run,
    mlm_probe,
    model_probe,
    no_certificate,
    same_counts,
    same_probe,
    same_rows,
    select_indices,
    smoothed_from_run,
)
from ranmask_jax.smoothing import SmoothedClassifier

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("data_dir", "batch_size", "num_examples", "texts_per_call", "coordinator_address",
                     "num_processes", "process_id")


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
                                   **({"safer_table_fingerprint": fingerprint_files([Path(cfg.safer_table)])}
                                      if cfg.safer_table else {}),
                                   "data_fingerprint": fingerprint_rows(selected), "model_probe": probe,
                                   **({"mlm_probe": mlm_now} if mlm_now else {})},
                            same_model=lambda stored: {"probe_difference": same_probe(stored, probe,
                                                                                      mlm_now=mlm_now),
                                                       **same_counts(rowfile.rows + others, score)},
                            same_data=lambda: same_rows(rowfile.rows + others, ds))
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
        if cfg.plan == "sequential" and not cfg.accuracy_only:  # rows as texts finish; the next ones take their place
            for n, row in enumerate(_sequential_rows(cfg, sc, ds, todo), 1):
                beat("%d/%d texts, accuracy of g so far %.1f%%, %.2f s a text", len(done) + n * world,
                     len(indices), 100 * n_correct / max(n_scored, 1), (time.perf_counter() - t_start) / n)
                rowfile.append(row)
                n_scored, n_correct = n_scored + 1, n_correct + bool(row["correct"])
                bar.update(1)
            todo = []
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
    if cfg.safer_table:
        return _safer_scorer(cfg, sc, ds)
    root = jax.random.key(cfg.seed)
    # exact mode when enumerating costs no more copies than sampling would: n (certify) or n0 (accuracy only)
    thr = (cfg.n0 if cfg.accuracy_only else cfg.n) if cfg.exact_threshold is None else cfg.exact_threshold
    if cfg.plan == "sequential" and not cfg.accuracy_only and cfg.exact_threshold is None:
        thr = None  # the sequential plan's own default (ranmask_jax.smoothing: enumeration only where it is cheap)

    def score(group: list[int]) -> list[dict]:
        exs = [ds.examples[i] for i in group]
        keys = [jax.random.fold_in(root, i) for i in group]
        if cfg.accuracy_only:
            preds = sc.predict_many(keys, [e.text for e in exs], [e.text_pair for e in exs], n=cfg.n0,
                                    exact_threshold=thr)
            return [{"index": i, "label": ex.label, "prediction": p.label, "correct": p.label == ex.label,
                     "counts": list(p.counts), "n": p.n, "h": p.h, "k": p.k}
                    for i, ex, p in zip(group, exs, preds, strict=True)]
        texts, labels, pairs = [e.text for e in exs], [e.label for e in exs], [e.text_pair for e in exs]
        if cfg.plan == "sequential":  # only to re-ask rows already written (resume checks); runs use the stream
            certs = sc.certify_sequential_many(keys, texts, labels, pairs, n0=cfg.n0, n_max=cfg.n_max,
                                               alpha=cfg.alpha, beta=cfg.beta, exact_threshold=thr)
        else:
            certs = sc.certify_many(keys, texts, labels, pairs, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, beta=cfg.beta,
                                    exact_threshold=thr, n_r=cfg.n_r)
        return [_certificate_row(i, ex, cert, cfg) for i, ex, cert in zip(group, exs, certs, strict=True)]

    return score


def _safer_scorer(cfg: CertifyConfig, sc: SmoothedClassifier, ds):
    """``_scorer`` for SAFER's smoothed classifier: text i's copies draw from ``default_rng([seed, i])``."""
    from ranmask_jax.safer import PerturbationTable, SaferClassifier

    safer = SaferClassifier(sc.base_logits, PerturbationTable.load(cfg.safer_table))

    def score(group: list[int]) -> list[dict]:
        rows = []
        for i in group:
            ex, rng = ds.examples[i], np.random.default_rng([cfg.seed, i])
            if ex.text_pair is not None:
                raise DataError(f"{ds.source}: SAFER certifies single texts; sentence pairs are not supported")
            if cfg.accuracy_only:
                counts = np.bincount(safer.copy_logits(ex.text, rng, cfg.n0).argmax(-1), minlength=sc.num_labels)
                pred = int(counts.argmax())
                rows.append({"index": i, "label": ex.label, "prediction": pred, "correct": pred == ex.label,
                             "counts": counts.tolist(), "n": cfg.n0})
                continue
            cert = safer.certify(ex.text, rng, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha)
            counts = np.zeros(sc.num_labels, int)
            counts[: len(cert.counts)] = cert.counts
            rows.append({"index": i, "label": ex.label, "prediction": cert.label, "correct": cert.label == ex.label,
                         "counts": counts.tolist(), "n": cfg.n, "n0": cfg.n0, "p_lower": cert.p_lower,
                         "tv_bound": cert.tv_bound, "certified": bool(cert.certified and cert.label == ex.label),
                         "text": ex.text})
        return rows

    return score


def _safer_summary(out: Path, rows: list[dict], cfg: CertifyConfig, ds) -> dict:
    """SAFER's certified accuracy: the share of texts g gets right with a certificate against every substitution
    of the table."""
    tv = [r["tv_bound"] for r in rows]
    summary = {"n": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
               "certified_accuracy": float(np.mean([r["certified"] for r in rows])),
               "abstained": sum(r["prediction"] == -1 for r in rows),
               "tv_bound_median": float(np.median(tv)), "tv_bound_zero": float(np.mean(np.asarray(tv) == 0)),
               "seconds_total": round(sum(r["seconds"] for r in rows), 2), "safer_table": cfg.safer_table,
               "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("predict", "radius")}}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text(out / "table.md", f"SAFER on {dataset_title(ds)} ({len(rows)} texts; n0 = {cfg.n0}, n = {cfg.n}, "
                                 f"alpha = {cfg.alpha}; table {Path(cfg.safer_table).name})\n\n"
                                 "| accuracy of g % | certified accuracy % | abstained | median TV bound | "
                                 "TV bound 0 % |\n|---|---|---|---|---|\n"
                                 f"| {100 * summary['accuracy']:.1f} | {100 * summary['certified_accuracy']:.1f} | "
                                 f"{summary['abstained']} | {summary['tv_bound_median']:.3f} | "
                                 f"{100 * summary['tv_bound_zero']:.1f} |\n")
    return summary


def _certificate_row(i: int, ex, cert, cfg: CertifyConfig) -> dict:
    """The row of example ``i`` (``ex``) certified as ``cert`` (less ``seconds``)."""
    row = {"index": i, **dataclasses.asdict(cert), "n0": cfg.n0,
           "radius_original": cert.radius + 1 if cert.correct else None, "text": ex.text}
    if ex.text_pair is not None:
        row["text_pair"] = ex.text_pair
    return row


def _sequential_rows(cfg: CertifyConfig, sc: SmoothedClassifier, ds, todo: list[int]):
    """The rows of ``todo`` under the sequential plan, as each text finishes, ``--texts-per-call`` texts in flight;
    keys as ``_scorer``'s, so a text's row does not depend on which others share its rounds."""
    root = jax.random.key(cfg.seed)
    exs = [ds.examples[i] for i in todo]
    stream = sc.certify_sequential_stream([jax.random.fold_in(root, i) for i in todo], [e.text for e in exs],
                                          [e.label for e in exs], [e.text_pair for e in exs],
                                          in_flight=cfg.texts_per_call, n0=cfg.n0, n_max=cfg.n_max, alpha=cfg.alpha,
                                          beta=cfg.beta, exact_threshold=cfg.exact_threshold)
    for j, cert, seconds in stream:
        yield {**_certificate_row(todo[j], exs[j], cert, cfg), "seconds": round(seconds, 4)}


def _row_files(out: Path) -> list[Path]:
    """The row files of a run: certify.jsonl and the per-process certify.p<i>.jsonl."""
    return sorted(out.glob("certify.jsonl")) + sorted(out.glob("certify.p*.jsonl"))


def write_summary(out: Path, rows: list[dict], cfg: CertifyConfig, settings: dict, ds) -> dict:
    name = dataset_title(ds)
    if cfg.safer_table and not cfg.accuracy_only:
        return _safer_summary(out, rows, cfg, ds)
    if cfg.accuracy_only:
        summary = {"n": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
                   "seconds_total": round(sum(r["seconds"] for r in rows), 2), "config": dataclasses.asdict(cfg)}
        if cfg.safer_table:  # SAFER's copies: word substitutions of the whole text, no masking
            summary.update(smoothing="safer", safer_table=cfg.safer_table)
            how = f"substitution copies (SAFER, table {Path(cfg.safer_table).name})"
        else:
            summary.update(rho=settings["rho"], sampling=settings["sampling"], purifier=settings["purifier"],
                           empirical_only=settings["empirical_only"])
            how = "".join([f"copies, rho={settings['rho']}",
                           ", LM-based sampling (empirical only)" if settings["sampling"] == "lm" else "",
                           ", MaskPure refill" if settings["purifier"] else ""])
        write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text(out / "table.md", f"accuracy of g on {name} ({len(rows)} texts, vote over n0={cfg.n0} {how}): "
                                     f"{100 * summary['accuracy']:.2f}%\n")
        return summary
    summary = metrics.summarize(rows)
    summary.update(seconds_total=round(sum(r["seconds"] for r in rows), 2),
                   copies_total=sum(r.get("copies", 0) for r in rows),
                   config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("predict", "radius")},
                   rho=settings["rho"], min_keep=settings["min_keep"], max_len=settings["max_len"],
                   purifier=settings["purifier"])
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    copies = (f"sequential plan: n0 <= {cfg.n0}, n <= {cfg.n_max}, {summary['copies_total'] / len(rows):.0f} copies "
              "a text" if cfg.plan == "sequential" else f"n0 = {cfg.n0}, n = {cfg.n}")
    title = f"{name}, rho = {settings['rho']}, {copies}, alpha = {cfg.alpha}"
    write_text(out / "table.md", metrics.markdown_table(summary, title))
    curves = {f"rho = {settings['rho']}, {metrics.BETA_NAMES[b]}": s for b, s in summary["by_beta"].items()}
    metrics.plot_certified_accuracy(curves, out / "certified-accuracy", title=name, n=len(rows))
    return summary


def predict_texts(cfg: CertifyConfig) -> list[dict]:
    """``--predict``: g's label and vote distribution (and radius with ``--radius``) for raw texts."""
    sc, settings = smoothed_from_run(cfg)
    if settings["empirical_only"] and cfg.radius:
        raise ValueError(no_certificate(cfg))
    names = settings["label_names"] or [f"LABEL_{i}" for i in range(sc.num_labels)]
    where = Path("<stdin>" if cfg.predict == "-" else cfg.predict)
    lines = read_lines(where, cfg.encoding, stream=sys.stdin.buffer if cfg.predict == "-" else None)
    results = []
    root = jax.random.key(cfg.seed)
    thr = cfg.n if cfg.exact_threshold is None else cfg.exact_threshold
    for lineno, line in enumerate(lines, 1):  # one row per line of the file (lines end at \n only)
        if not line.strip():
            continue
        line = line[:-1] if line.endswith("\n") else line
        parts = (line[:-1] if line.endswith("\r") else line).split("\t")
        if len(parts) > 2:
            raise DataError(f"{cfg.predict}:{lineno}: expected a text or premise<TAB>hypothesis")
        text, pair = parts[0], (parts[1] if len(parts) == 2 else None)
        key = jax.random.fold_in(root, lineno)
        try:
            if cfg.radius and cfg.plan == "sequential":
                cert = sc.certify_sequential_many([key], [text], [None], [pair], n0=cfg.n0, n_max=cfg.n_max,
                                                  alpha=cfg.alpha, beta=cfg.beta,
                                                  exact_threshold=cfg.exact_threshold)[0]
            elif cfg.radius:  # label, votes and radius from one certificate
                cert = sc.certify(key, text, None, pair, n0=cfg.n0, n=cfg.n, alpha=cfg.alpha, beta=cfg.beta,
                                  exact_threshold=thr, n_r=cfg.n_r)
            else:
                pred = sc.predict(key, text, pair, n=cfg.n, exact_threshold=thr)
        except NonFiniteLogits:
            raise
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
