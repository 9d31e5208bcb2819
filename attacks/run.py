"""Attack runs: one flushed JSONL row per attacked example, resumable, with a summary and a Markdown table.

``attack.jsonl`` rows: index, label, status (skipped: the clean text is misclassified; failed; succeeded),
clean_prediction, clean_scores, final_prediction, final_scores (the attack's last answer about the returned text),
recheck_prediction (a fresh, independent query of a randomized scorer about the returned text, not counted in
``queries``; equal to final_prediction for the deterministic plain model), queries (texts asked; under the cache
and common oracles each distinct text once), judge_queries (the adaptive attack's: questions to the judge),
forward_passes (inputs the classifier ran on for the example: masked copies, each distinct one once, or plain
texts), words_changed, words, words_searched (the leading words the model reads, within max_len: only these are
attacked), perturbed_fraction, note, seconds, machine (what the seconds were measured on), text, perturbed_text. A
rerun with the same config resumes after the last row.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from attacks.search import FALLBACKS
from ranmask_jax import distributed, ensembles
from ranmask_jax.config import SmoothedRunConfig, check_resume_config, opt
from ranmask_jax.data import DataError
from ranmask_jax.files import RowFile, fingerprint_files, fingerprint_rows, write_text

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = ("data_dir", "batch_size", "num_examples", "limit")
ORACLES = ("cache", "fresh", "common", "shared")


def legacy_settings(stored: dict) -> dict:
    """What a run made before a setting existed did: the values its config lacks (resuming it with other values
    is refused). Before these fields, "logit" meant what "meanlogit" means now, the search skipped a word whose
    candidates did not improve, BERT-Attack beamed over subwords, and the oracle was fresh copies or the cache."""
    return {"oracle": "cache" if stored.get("cache") else "fresh", "fallback": "skip", "mlm_subwords": "beam",
            "ensemble_rule": ensemble_rule("meanlogit" if stored.get("ensemble") == "logit" else
                                           stored.get("ensemble", "vote"))}


def ensemble_rule(name: str) -> str:
    """What an ensemble name computes, as the run's config records it (so a renamed rule cannot resume a run)."""
    return "the base model on the plain text" if name == "none" else ensembles.describe(name)


@dataclasses.dataclass
class AttackConfig(SmoothedRunConfig):
    """An attack on a trained run (the paper's Section 4.3: n = 100 copies per query, 100 examples per cell)."""

    out: str = opt("", "output directory: attack.jsonl (one row per example), summary.json, table.md")
    recipe: str = opt("deepwordbug", "deepwordbug, textfooler, bert-attack (needs --attack-mlm) or pwws")
    attack_mlm: str | None = opt(None, "bert-attack: the masked-LM run whose predictions are the candidates")
    num_examples: int | None = opt(100, "attack a seeded random subset of this many texts (default 100; none: all)")
    grow_from: int | None = opt(None, "a smaller --num-examples whose texts this selection contains (the earlier "
                                      "cells' texts, plus a seeded draw of the rest), so that cells of both sizes "
                                      "compare on the smaller one's texts")
    limit: int | None = opt(None, "attack only this many of the selected texts: a seeded random subset of them, "
                                  "nested (a larger limit later extends the same rows, and every cell with the "
                                  "same limit attacks the same texts); none: all")
    seed: int = opt(0, "root seed: the subset, the smoothed copies and the random character edits")
    ensemble: str = opt("vote", "none (the base model on the plain text), or a rule of the smoothed classifier: "
                                "vote (vote shares), logit (the original code's: softmax of the mean L2-normalised "
                                "logits), meanlogit (softmax of the mean raw logits), prob (mean probabilities; "
                                "MaskPure's 'logit'), majority (vote shares, ties to the larger mean probability), "
                                "onehot (one-hot of that majority class)")
    n: int = opt(100, "masked copies per query of the smoothed classifier")
    oracle: str = opt("cache", "how the smoothed classifier answers queries (docs/ATTACKS.md): cache (the paper's, "
                               "through TextAttack's cache: fresh copies for each distinct text, one answer per text "
                               "and example), fresh (fresh copies for every query: a deployed randomized defense), "
                               "common (one set of n keep sets per example and word count, each copy's logits "
                               "cached: the answers of 'cache' with common random numbers, fewer forward passes), "
                               "shared (new keep sets for every call of the search, shared by its texts: the answers "
                               "of 'fresh' with common random numbers within a step, fewer forward passes)")
    search_ensemble: str | None = opt(None, "the adaptive attack: the rule the search reads (e.g. prob, the mean "
                                            "probabilities over the copies: an expectation over the masking), "
                                            "while success is judged by --ensemble on n fresh copies per question "
                                            "(the judge's questions are counted apart: judge_queries)")
    fallback: str = opt("random", "greedy search, when no candidate of a word lowers the true class's score: random "
                                  "(the original code's TextAttack 0.2: go on from a random candidate) or skip "
                                  "(TextAttack upstream: keep the current text)")
    mlm_subwords: str = opt("single", "bert-attack: candidates only for words of one subword (single: the original "
                                      "code's) or also for longer words, by a beam over their subwords (beam)")
    query_budget: int | None = opt(None, "queries per example (none: unlimited, as in the paper)")
    safer_table: str | None = opt(None, "attack SAFER's smoothed classifier instead of RanMASK's: --n random "
                                        "substitution copies per query from this perturbation table "
                                        "(experiments/safer_table.py), each classified unmasked, --ensemble vote or "
                                        "logit")

    def __post_init__(self):
        super().__post_init__()
        from attacks.recipes import RECIPES

        if not self.out:
            raise ValueError("out is required")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
        if self.recipe == "bert-attack" and not self.attack_mlm:
            raise ValueError("bert-attack needs --attack-mlm RUN (a masked-LM run: train.py --task mlm)")
        if self.ensemble != "none":
            ensembles.check(self.ensemble)
        if self.ensemble == "none" and (self.sampling != "uniform" or self.purifier):
            raise ValueError("--sampling lm and --purifier act on the smoothed classifier; --ensemble none attacks "
                             "the plain model")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        for name, value, allowed in (("oracle", self.oracle, ORACLES), ("fallback", self.fallback, FALLBACKS),
                                     ("mlm_subwords", self.mlm_subwords, ("single", "beam"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.search_ensemble is not None:
            ensembles.check(self.search_ensemble)
            if self.ensemble == "none":
                raise ValueError("--search-ensemble attacks a smoothed classifier: give --ensemble (e.g. vote)")
        if self.oracle in ("common", "shared") and self.sampling != "uniform":
            raise ValueError(f"--oracle {self.oracle} needs uniform keep sets (the same copies for every text of a "
                             "word count); LM sampling draws them per text: use --oracle cache or fresh")
        if self.safer_table is not None:
            if self.ensemble == "none":
                raise ValueError("--safer-table attacks SAFER's smoothed classifier: give --ensemble (vote, logit)")
            if self.sampling != "uniform" or self.purifier or self.oracle in ("common", "shared"):
                raise ValueError("--safer-table draws substitution copies: it takes neither --sampling lm, "
                                 "--purifier nor --oracle common/shared (use cache or fresh)")
        if self.query_budget is not None and self.query_budget < 1:
            raise ValueError(f"query_budget must be >= 1, got {self.query_budget}")
        if self.num_examples is not None and self.num_examples < 1:
            raise ValueError("num_examples must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if self.grow_from is not None and (self.grow_from < 1 or self.num_examples is None
                                           or self.grow_from >= self.num_examples):
            raise ValueError(f"grow_from must be >= 1 and below num_examples, got {self.grow_from}")


def build_scorers(cfg: AttackConfig):
    """``(make_scorer, recheck, make_judge, smoothed, settings)``: see ``scorers``."""
    from ranmask_jax.runs import smoothed_from_run

    sc, settings = smoothed_from_run(cfg)
    return (*scorers(sc, cfg), sc, settings)


def scorers(sc, cfg: AttackConfig):
    """``(make_scorer, recheck, make_judge)`` of ``cfg``'s oracle and rules on the smoothed classifier ``sc``:
    example i's queries draw from ``fold_in(fold_in(seed, 0), i)``, its fresh recheck from ``fold_in(fold_in(seed,
    1), i)``, the adaptive attack's judge (``--search-ensemble``; else None) from ``fold_in(fold_in(seed, 2), i)``."""
    import jax

    from attacks.harness import common_scorer, plain_scorer, smoothed_scorer

    root = jax.random.key(cfg.seed)
    if cfg.ensemble == "none":
        plain = plain_scorer(sc)
        return (lambda i: plain), None, None
    rule = cfg.search_ensemble or cfg.ensemble
    if cfg.safer_table is not None:  # streams (seed, 0, i) for the search, (seed, 1, i) the recheck, 2 the judge
        from attacks.harness import safer_scorer
        from ranmask_jax.safer import PerturbationTable, SaferClassifier

        safer, c = SaferClassifier(sc.base_logits, PerturbationTable.load(cfg.safer_table)), sc.num_labels

        def recheck_safer(i, text):
            return int(np.argmax(safer_scorer(safer, (cfg.seed, 1, i), cfg.n, cfg.ensemble, c)([text])[0]))

        return ((lambda i: safer_scorer(safer, (cfg.seed, 0, i), cfg.n, rule, c)), recheck_safer,
                (lambda i: safer_scorer(safer, (cfg.seed, 2, i), cfg.n, cfg.ensemble, c)) if cfg.search_ensemble
                else None)

    def make(i):
        key = jax.random.fold_in(jax.random.fold_in(root, 0), i)
        if cfg.oracle in ("common", "shared"):
            return common_scorer(sc, key, cfg.n, rule, per_call=cfg.oracle == "shared")
        return smoothed_scorer(sc, key, cfg.n, rule)

    def recheck(i, text):
        fresh = smoothed_scorer(sc, jax.random.fold_in(jax.random.fold_in(root, 1), i), cfg.n, cfg.ensemble)
        return int(np.argmax(fresh([text])[0]))

    def judge(i):
        return smoothed_scorer(sc, jax.random.fold_in(jax.random.fold_in(root, 2), i), cfg.n, cfg.ensemble)

    return make, recheck, (judge if cfg.search_ensemble else None)


def words_read(sc, text: str) -> int:
    """How many leading words of ``text`` the model reads: those with a token among the first ``max_len`` tokens of
    the unmasked text (a masked copy is shorter, but the search, as the original one, works on what the plain
    model reads). A classifier that reads strings (``from_predict_fn`` with ``inputs="text"``) reads them all."""
    enc = sc.encode(text)
    if not hasattr(enc, "word_index"):
        return enc.h
    content = enc.word_index[(enc.word_index >= 0) & enc.has_token][: sc.max_len - enc.num_specials]
    return enc.h if len(content) == 0 or content[-1] == enc.h - 1 else int(content[-1]) + 1


def same_answers(rows: list[dict], make_scorer, cfg: AttackConfig, k: int = 5) -> dict:
    """Whether the weights loaded now answer as the ones that wrote ``rows``: re-ask the clean query (the first
    query of an example, drawn from the same key) of the first ``k`` rows and compare with the stored clean
    prediction and scores. The scores may move by float rounding: 1e-4 for probabilities, one copy's vote (1/n)
    for vote shares, none for one-hot scores. Returns what was compared; raises ValueError naming the example
    that differs."""
    from attacks.text import AttackText

    tol = {"none": 1e-4, "logit": 1e-4, "meanlogit": 1e-4, "prob": 1e-4, "onehot": 1e-6}.get(cfg.ensemble,
                                                                                          1 / cfg.n + 1e-6)
    worst = 0.0
    for r in rows[:k]:
        now = np.asarray(make_scorer(r["index"])([AttackText.from_string(r["text"]).text])[0], np.float64)
        diff = float(np.abs(now - np.asarray(r["clean_scores"])).max())
        if int(np.argmax(now)) != r["clean_prediction"] or diff > tol:
            raise ValueError(f"example {r['index']}: clean scores {np.round(now, 4).tolist()} now, "
                             f"{r['clean_scores']} in the rows (tolerance {tol:.2g})")
        worst = max(worst, diff)
    log.warning("the model weights differ from those that wrote %s's rows, but they answer the same: the clean "
                "queries of %d examples agree within %.2g (tolerance %.2g); resuming", cfg.out, min(k, len(rows)),
                worst, tol)
    return {"rows_before": len(rows), "examples_checked": min(k, len(rows)), "max_score_difference": worst,
            "tolerance": tol}


def attack_dataset(cfg: AttackConfig) -> dict:
    """Attack ``cfg.num_examples`` texts of a split (``cfg.limit`` of them); rows stream into ``attack.jsonl``;
    returns the summary."""
    from tqdm.auto import tqdm

    from attacks.recipes import RECIPES
    from attacks.text import AttackText
    from ranmask_jax.progress import Heartbeat
    from ranmask_jax.runs import (
        limit_indices,
        load_for_run,
        load_mlm,
        mlm_probe,
        model_probe,
        same_probe,
        same_rows,
        select_indices,
    )

    out = Path(cfg.out)
    with RowFile(out / "attack.jsonl") as rowfile:
        make_scorer, recheck, make_judge, sc, settings = build_scorers(cfg)
        ds = load_for_run(cfg, settings, sc.num_labels)
        if any(e.text_pair is not None for e in ds.examples):
            raise DataError(f"{ds.source}: sentence pairs cannot be attacked yet (single texts only)")
        indices = select_indices(len(ds), cfg.num_examples, cfg.seed, cfg.grow_from)
        selected = [[int(i), ds.examples[i].text, ds.examples[i].label] for i in indices]
        kw, mlms, fingerprints = {}, dict(settings["mlms"]), {"model_fingerprint": settings["model_fingerprint"]}
        if cfg.safer_table is not None:  # the table decides the copies: it binds the rows too
            fingerprints["safer_table_fingerprint"] = fingerprint_files([Path(cfg.safer_table)])
        if cfg.recipe == "bert-attack":  # its candidates come from this masked LM: its weights bind the rows too
            model, tok, files = load_mlm(cfg.attack_mlm, cfg)
            kw = {"mlm": (model, tok), "max_len": min(256, model.cfg.max_positions), "subwords": cfg.mlm_subwords}
            mlms["attack"] = (model, tok)
            fingerprints["attack_mlm_fingerprint"] = fingerprint_files(files)
        probe = model_probe(sc, [t for _, t, _ in selected])
        mlm_now = mlm_probe(mlms, [t for _, t, _ in selected])
        check_resume_config(out / "attack_config.json", cfg, RESUMABLE_CHANGES, started=bool(rowfile.rows),
                            extra={**fingerprints, "data_fingerprint": fingerprint_rows(selected),
                                   "ensemble_rule": ensemble_rule(cfg.ensemble), "model_probe": probe,
                                   **({"mlm_probe": mlm_now} if mlm_now else {})},
                            legacy=legacy_settings,
                            same_model=lambda stored: {"probe_difference": same_probe(stored, probe,
                                                                                      mlm_now=mlm_now),
                                                       **same_answers(rowfile.rows, make_scorer, cfg)},
                            same_data=lambda: same_rows(rowfile.rows, ds))
        indices = limit_indices(indices, cfg.limit, cfg.seed)
        recipe = RECIPES[cfg.recipe](unk_token=sc.tokenizer.unk_token, **kw)
        done = {r["index"] for r in rowfile.rows}
        todo = [int(i) for i in indices if int(i) not in done]
        where = distributed.machine()
        if done:
            log.info("resuming: %d of %d examples already attacked", len(done), len(indices))
        bar = tqdm(total=len(todo), desc=f"{cfg.recipe} vs {cfg.ensemble}", unit="text", disable=None,
                   dynamic_ncols=True)
        beat = Heartbeat(log, bar)
        for j, i in enumerate(todo):
            beat("%d/%d examples attacked", len(done) + j, len(indices))
            ex = ds.examples[i]
            try:
                AttackText.from_string(ex.text)
            except ValueError as e:
                raise DataError(f"{ds.source}: example {i}: {e}") from None
            row = attack_example(sc, recipe, cfg, i, ex.text, ex.label, make_scorer(i), recheck,
                                 make_judge(i) if make_judge else None)
            perturbed = row.pop("perturbed_text")
            rowfile.append({**row, "machine": where, "text": ex.text, "perturbed_text": perturbed})
            bar.update(1)
        bar.close()
        wanted = set(indices.tolist())
        rows = sorted((r for r in rowfile.rows if r["index"] in wanted), key=lambda r: r["index"])
    return write_summary(out, rows, cfg, settings, recipe.params)


def attack_example(sc, recipe, cfg: AttackConfig, i: int, text: str, label: int, scorer, recheck,
                   judge=None) -> dict:
    """Attack one text (example ``i``) with ``recipe`` through ``scorer`` under ``cfg``'s oracle, query budget and
    fallback (and with ``judge``, the adaptive attack's verdicts): its row, less ``machine`` and ``text``."""
    from attacks.constraints import WithinFirst
    from attacks.harness import Queries
    from attacks.search import greedy_wir
    from attacks.text import AttackText

    t0 = time.perf_counter()
    original = AttackText.from_string(text)
    queries = Queries(scorer, budget=cfg.query_budget, cache=cfg.oracle in ("cache", "common"))
    read = words_read(sc, text)  # words past max_len are never searched
    searched = dataclasses.replace(recipe, pre=[*recipe.pre, WithinFirst(read)])
    passes = sc.forward_passes
    verdicts = Queries(judge) if judge is not None else None
    res = greedy_wir(original, label, queries, searched, np.random.default_rng([cfg.seed, i]), fallback=cfg.fallback,
                     judge=verdicts)
    passes = sc.forward_passes - passes
    again = res.final_prediction
    if recheck is not None and res.status != "skipped":
        again = recheck(i, res.text.text)
    changed = res.text.words_changed(original)
    return {"index": i, "label": label, "status": res.status, "clean_prediction": res.clean_prediction,
            "clean_scores": [round(float(x), 6) for x in res.clean_scores], "final_prediction": res.final_prediction,
            "final_scores": [round(float(x), 6) for x in res.final_scores], "recheck_prediction": again,
            "queries": queries.count, **({"judge_queries": verdicts.count} if verdicts is not None else {}),
            "forward_passes": passes, "words_changed": changed, "words": len(original),
            "words_searched": read, "perturbed_fraction": round(changed / len(original), 6), "note": res.note,
            "seconds": round(time.perf_counter() - t0, 3), "perturbed_text": res.text.text}


def summarize(rows: list[dict]) -> dict:
    """The paper's Cln / Boa / Succ: clean accuracy, accuracy under attack, attack success rate; plus queries,
    perturbed-word fraction and seconds per attacked example, and accuracy under attack by a fresh recheck."""
    n = len(rows)
    status = [r["status"] for r in rows]
    attacked = [r for r in rows if r["status"] != "skipped"]
    won = [r for r in rows if r["status"] == "succeeded"]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    by_machine: dict[str, list[float]] = {}  # a cell resumed on other machines: its cost on each
    for r in attacked:  # rows of older versions have no "machine"
        by_machine.setdefault(r.get("machine", "unrecorded"), []).append(r["seconds"])
    return {
        "n": n, "skipped": status.count("skipped"), "failed": status.count("failed"), "succeeded": len(won),
        "clean_accuracy": len(attacked) / n if n else None,
        "robust_accuracy": status.count("failed") / n if n else None,
        "robust_accuracy_recheck": sum(r["recheck_prediction"] == r["label"] for r in attacked) / n if n else None,
        "success_rate": len(won) / len(attacked) if attacked else None,
        "avg_queries": mean([r["queries"] for r in attacked]),
        "avg_forward_passes": mean([r["forward_passes"] for r in attacked]) if all(
            "forward_passes" in r for r in attacked) else None,
        "avg_perturbed_fraction": mean([r["perturbed_fraction"] for r in won]),
        "seconds_per_attacked_example": mean([r["seconds"] for r in attacked]),
        "seconds_total": round(sum(r["seconds"] for r in rows), 2),
        "by_machine": {m: {"attacked": len(sec), "seconds_per_attacked_example": mean(sec)}
                       for m, sec in sorted(by_machine.items())},
    }


def write_summary(out: Path, rows: list[dict], cfg: AttackConfig, settings: dict, params: dict) -> dict:
    from ranmask_jax.runs import DISPLAY_NAMES

    s = summarize(rows)
    base = f"{settings['trained_with']}-trained model" if settings.get("trained_with") else "plain model"
    defense = base if cfg.ensemble == "none" else (
        f"SAFER {cfg.ensemble}, n={cfg.n} ({Path(cfg.safer_table).name})" if cfg.safer_table else
        ("MaskPure" if cfg.purifier else "RanMASK") + f"-{settings['rho']} {cfg.ensemble}, n={cfg.n}"
        + (" + LM sampling" if cfg.sampling == "lm" else "") + f", {cfg.oracle} oracle"
        + (f"; adaptive: the search reads {cfg.search_ensemble}, {cfg.ensemble} of fresh copies judges"
           if cfg.search_ensemble else ""))
    search = f"greedy search, {cfg.fallback} fallback" + (f", {cfg.mlm_subwords}-subword candidates"
                                                          if cfg.recipe == "bert-attack" else "")
    summary = {**s, "recipe": cfg.recipe, "defense": defense, "search": search, "oracle": cfg.oracle,
               "rho": settings["rho"], "recipe_params": params,
               "config": dataclasses.asdict(cfg)}
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    name = DISPLAY_NAMES.get(cfg.dataset, cfg.dataset)
    write_text(
        out / "table.md",
        f"{cfg.recipe} on {name} {cfg.split} ({s['n']} examples), {defense}; {search}\n\n"
        "| Cln % | Boa % | Boa % (recheck) | Succ % | queries | forward passes | perturbed words % "
        "| s / attacked example |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {pct(s['clean_accuracy'])} | {pct(s['robust_accuracy'])} | {pct(s['robust_accuracy_recheck'])} | "
        f"{pct(s['success_rate'])} | {num(s['avg_queries'], '.1f')} | {num(s['avg_forward_passes'], '.0f')} | "
        f"{pct(s['avg_perturbed_fraction'])} | {num(s['seconds_per_attacked_example'], '.1f')} |\n")
    return summary
