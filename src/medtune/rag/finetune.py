"""`train.objective: embedding` or `reranker`: fine-tune the retriever's models on the QA data medtune loads.

Pairs: each training record's question -> its passage, exactly as the index stores it (question +
answer, the first window of a long answer), plus `rewrites` consumer-style rewrites of the question
(medtune.data.rewrites) as extra anchors. With `hard_negatives`, each pair also gets the best-ranked
passage of *another focus* for its question in a medtune index of the training passages, built
with the starting model: the same focus is skipped, because another answer about the same disease
often answers the question too. Training is sentence-transformers' own trainer with
MultipleNegativesRankingLoss (the batch's other passages are negatives too), no duplicate texts per
batch.

A reranker (CrossEncoder, sentence-transformers' CrossEncoderTrainer) learns from the same pairs: with
`loss: mnrl`, a softmax per question over its passage, its hard negative and `negatives` other passages
of the batch; with `loss: bce`, (question, passage, 1) and (question, hard negative, 0) rows.

The run directory holds model/ (a sentence-transformers folder with medtune.json): `medtune index
build --embedder RUN_DIR` takes an embedder, `--reranker RUN_DIR` a re-ranker. The report scores the
starting and the trained model the same way: MRR@10 of the validation questions' consumer rewrites
against the validation passages (a re-ranker: the default embedder's top 20 re-ranked, against that
embedder alone).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import datasets
import numpy as np
from accelerate import PartialState
from sentence_transformers import (CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments, SentenceTransformer,
                                   SentenceTransformerTrainer, SentenceTransformerTrainingArguments)
from sentence_transformers.cross_encoder import losses as ce_losses
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from transformers import AutoConfig, TrainerCallback

from medtune.data import prepare_data
from medtune.data.rewrites import consumer_rewrites
from medtune.eval.report import plot_loss_curve, write_report
from medtune.io import write_atomic
from medtune.logs import log, transformers_quiet
from medtune.models import write_card
from medtune.recipe import Recipe, RecipeError, RetrieverConfig, dump_recipe
from medtune.records import QARecord, from_dataset
from medtune.train.common import choose_precision, cpu_only, fit, tracking, training_kwargs
from medtune.rag.embedder import DEFAULT_EMBEDDER, is_bi_encoder, resolve_folder
from medtune.rag.evaluate import score
from medtune.rag.passages import passages_from_records

EVAL_QUERIES = 500  # validation rewrites scored before and after training
RERANK_DEPTH = 20  # candidates a re-ranker orders, as `Retriever` does by default


class EmbedderTrainer(SentenceTransformerTrainer):
    """Counts the real tokens of every text column, for the training line's tokens/s."""

    train_tokens = 0

    def training_step(self, model, inputs, *args, **kwargs):
        self.train_tokens += int(sum(v.sum() for k, v in inputs.items() if k.endswith("attention_mask")))
        return super().training_step(model, inputs, *args, **kwargs)


class RerankerTrainer(CrossEncoderTrainer):
    """Counts the tokens of each (question, passage) pair as the cross-encoder reads them (its batches hold text)."""

    train_tokens = 0

    def training_step(self, model, inputs, *args, **kwargs):
        for column in inputs:
            if column == "passage" or "negative" in column:
                pair = self.model.tokenizer(inputs["query"], inputs[column], truncation=True, max_length=self.model.max_length)
                self.train_tokens += sum(map(len, pair["input_ids"]))
        return super().training_step(model, inputs, *args, **kwargs)


def _check_layers(folder: Path, n: int, ref: str) -> None:
    """train.retriever.layers against the starting model's depth, before any data is read or mined."""
    depth = getattr(AutoConfig.from_pretrained(folder), "num_hidden_layers", None)
    if depth is not None and n >= depth:
        raise RecipeError(f"train.retriever.layers: {n}, but {ref} has {depth} layers; give fewer, or none to keep all")


def _keep_layers(transformer, n: int, ref: str) -> None:
    """Cut a BERT-style encoder (`encoder.layer`) to its first `n` layers, in place; the saved config says so."""
    base = transformer.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        raise RecipeError(f"train.retriever.layers: {ref} has no encoder.layer list to cut (BERT-style encoders only)")
    base.encoder.layer = layers[:n]
    base.config.num_hidden_layers = transformer.config.num_hidden_layers = n


def _first_passages(records: list[QARecord]) -> list[str]:
    """Each record's first passage text, as the index makes it."""
    parents: list[int] = []
    passages = passages_from_records(records, parents=parents)
    first: dict[int, str] = {}
    for p, parent in zip(passages, parents):
        first.setdefault(parent, p.text)
    return [first[i] for i in range(len(records))]


def _hard_negatives(records: list[QARecord], texts: list[str], model_folder: Path, max_seq_length: int,
                    focus_negatives: int = 0) -> tuple[list[list[str]], dict]:
    """Per record, the best-ranked passage of another focus for its question (hybrid search in a temporary
    medtune index of `texts`), then `focus_negatives` passages of its own focus that answer another question,
    best-ranked first. Records without a focus take the best passage that is not their own; where a focus has
    too few other questions, passages of other foci fill in (counted)."""
    from medtune.data.passages import Passage
    from medtune.rag.index import build_index, load_index
    from medtune.rag.retrieve import Retriever

    with tempfile.TemporaryDirectory(prefix="medtune-mining-") as tmp:
        passages = [Passage(id=str(i), text=t, title=r.focus, lang=r.language) for i, (r, t) in enumerate(zip(records, texts))]
        index = load_index(build_index(passages, Path(tmp) / "index", embedder=str(model_folder), max_seq_length=max_seq_length))
        hits = Retriever(index).search_batch([r.question for r in records], k=20)
    by_focus: dict[str, list[int]] = {}
    for j, r in enumerate(records):
        by_focus.setdefault(r.focus, []).append(j)
    rng = np.random.default_rng(0)
    negatives, report = [], {"hard_negative_fallbacks": 0} | ({"focus_negative_fallbacks": 0} if focus_negatives else {})
    for i, (r, found) in enumerate(zip(records, hits)):
        ranked = [int(h.id) for h in found if h.id != str(i) and texts[int(h.id)] != texts[i]]
        other = [j for j in ranked if not r.focus or records[j].focus != r.focus]
        if not other:  # every top-20 hit shares the focus: any passage of another focus
            report["hard_negative_fallbacks"] += 1
            pool = [j for j, o in enumerate(records) if j != i and (not r.focus or o.focus != r.focus)] or [j for j in range(len(records)) if j != i]
            other = [int(rng.choice(pool))]
        chosen = [other[0]]
        if focus_negatives:
            # Another question of the same focus: not the same question stored twice (MedQuAD repeats some across collections).
            asks_other = {j for j in by_focus.get(r.focus, []) if r.focus and j != i
                          and records[j].question.strip().lower() != r.question.strip().lower() and texts[j] != texts[i]}
            same = [j for j in ranked if j in asks_other]
            same += [int(j) for j in rng.permutation(sorted(asks_other - set(same)))]
            chosen += same[:focus_negatives]
            missing = 1 + focus_negatives - len(chosen)
            if missing:
                report["focus_negative_fallbacks"] += 1
                chosen += (other[1:] + [int(j) for j in rng.permutation(len(records)) if j != i and j not in chosen])[:missing]
        negatives.append([texts[j] for j in chosen])
    return negatives, report


def _mrr_at_10(model, queries: list[str], relevant: list[int], corpus: list[str], reranker=None) -> float:
    """MRR@10 of `model`'s exact search (with `reranker`: of its top RERANK_DEPTH, re-ranked)."""
    vectors = model.encode(corpus, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    q = model.encode(queries, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    top = np.argsort(-(q @ vectors.T), axis=1)[:, : RERANK_DEPTH if reranker else 10]
    if reranker is not None:
        scores = reranker.predict([(query, corpus[j]) for query, row in zip(queries, top) for j in row], batch_size=64,
                                  show_progress_bar=False)
        scores = np.asarray(scores, dtype=np.float32).reshape(top.shape)
        top = np.take_along_axis(top, np.argsort(-scores, axis=1, kind="stable"), axis=1)[:, :10]
    ranked = {str(n): [str(j) for j in row] for n, row in enumerate(top)}
    return score({str(n): {str(r): 1} for n, r in enumerate(relevant)}, ranked)["mrr@10"]


def _validation_queries(records: list[QARecord], recipe: Recipe) -> tuple[list[str], list[int]]:
    rewrites = consumer_rewrites(records, 1, seed=recipe.train.seed + 1)
    pairs = [(text[0], i) for i, text in enumerate(rewrites) if text]
    pairs = [pairs[i] for i in sorted(np.random.default_rng(0).permutation(len(pairs))[:EVAL_QUERIES])]
    return [q for q, _ in pairs], [i for _, i in pairs]


def _training_pairs(records: list[QARecord], cfg: RetrieverConfig, seed: int, folder: Path) -> tuple[dict[str, list[str]], dict]:
    """Columns anchor / positive (/ negative): each question and its rewrites, its passage, and a hard negative."""
    positives = _first_passages(records)
    anchors, targets = [r.question for r in records], list(range(len(records)))
    for i, made in enumerate(consumer_rewrites(records, cfg.rewrites, seed=seed)):
        anchors += made
        targets += [i] * len(made)
    columns = {"anchor": anchors, "positive": [positives[i] for i in targets]}
    report = {"questions": len(records), "rewrites": len(anchors) - len(records)}
    if cfg.hard_negatives:
        negatives, mined = _hard_negatives(records, positives, folder, cfg.max_seq_length, cfg.focus_negatives)
        for n in range(1 + cfg.focus_negatives):
            columns["negative" if n == 0 else f"focus_negative_{n}"] = [negatives[i][n] for i in targets]
        report |= mined  # fallbacks: no other-focus passage in the top 20 (a random one); too few questions of the same focus
    log.info("pairs: %d questions + %d consumer-style rewrites%s", len(records), report["rewrites"],
             f", each with {1 + cfg.focus_negatives} hard negative(s)" if cfg.hard_negatives else "")
    return columns, report


def _arguments(recipe: Recipe, run_dir: Path, cls) -> tuple:
    """(training arguments, tracking callbacks) as every medtune trainer sets them, except that batches are
    drawn by sentence-transformers' no-duplicates sampler (a text repeated in a batch would be its own
    false negative); length grouping needs token ids, and these datasets hold text."""
    t = recipe.train
    report_to, callbacks = tracking(recipe, run_dir)
    kwargs = training_kwargs(recipe, run_dir / "checkpoints", choose_precision(t.precision, t.objective), report_to, has_eval=False)
    return cls(**kwargs | {"train_sampling_strategy": "random"}, batch_sampler=BatchSamplers.NO_DUPLICATES), callbacks


def train_retriever(recipe: Recipe, run_dir: Path, *, resume: bool = False, callbacks: list[TrainerCallback] | None = None) -> Path:
    """A run of `train.objective: embedding` or `reranker`; returns the run directory."""
    t, cfg = recipe.train, recipe.train.retriever
    reranker = t.objective == "reranker"
    if PartialState().num_processes > 1:
        raise RecipeError(f"train.objective: {t.objective} trains in one process (a small model): launch it without torchrun/accelerate")
    model_id, folder = resolve_folder(recipe.model.name_or_path, what="re-ranking model" if reranker else "embedding model", flag="model")
    log.info("%s model: %s", t.objective, model_id)
    if cfg.layers:
        _check_layers(folder, cfg.layers, model_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "recipe.yaml", dump_recipe(recipe))
    data = prepare_data(recipe.data)
    train = from_dataset(data.splits["train"])
    if not train:
        raise RecipeError("data: no training records to make question -> passage pairs from")
    if n := sum(not r.question.strip() for r in train):
        raise RecipeError(f"data: {n} training records have no question (plain text?); {t.objective} training needs "
                          "question -> passage pairs")
    # Hard negatives come from the first stage: the model itself for an embedder, the default embedder for a re-ranker.
    miner = resolve_folder(DEFAULT_EMBEDDER)[1] if reranker else folder
    columns, pairs_report = _training_pairs(train, cfg, t.seed, miner)
    validation = from_dataset(data.splits["validation"])
    eval_set = (*_validation_queries(validation, recipe), _first_passages(validation)) if validation else None
    device = "cpu" if cpu_only() else None

    if reranker:
        # A bi-encoder folder (the default embedder) starts a cross-encoder too: its encoder, and a new scoring head
        # (transformers' report of the head's missing weights says just that).
        new_head = is_bi_encoder(folder)
        with transformers_quiet() if new_head else contextlib.nullcontext():
            model = CrossEncoder(str(folder), num_labels=1, max_length=cfg.max_seq_length, device=device)
        if new_head:
            log.info("re-ranker: %s's encoder with a new scoring head", model_id)
        if cfg.layers:
            _keep_layers(model.model, cfg.layers, model_id)
        first_stage = SentenceTransformer(str(miner), device=device)
        before = _mrr_at_10(first_stage, *eval_set) if eval_set else None
        negative_columns = [c for c in columns if "negative" in c]  # the recipe requires hard negatives for a re-ranker
        if cfg.loss == "bce":
            n = len(columns["anchor"])
            dataset = datasets.Dataset.from_dict({"query": columns["anchor"] * (1 + len(negative_columns)),
                                                  "passage": columns["positive"] + [t for c in negative_columns for t in columns[c]],
                                                  "label": [1.0] * n + [0.0] * n * len(negative_columns)})
            loss = ce_losses.BinaryCrossEntropyLoss(model)
        else:  # per question, a softmax over its passage, its hard negatives and `negatives` passages of the batch
            dataset = datasets.Dataset.from_dict({"query": columns["anchor"], "passage": columns["positive"]}
                                                 | {c: columns[c] for c in negative_columns})
            loss = (ce_losses.CachedMultipleNegativesRankingLoss(model, num_negatives=cfg.negatives, mini_batch_size=cfg.mini_batch_size)
                    if cfg.loss == "cached_mnrl" else ce_losses.MultipleNegativesRankingLoss(model, num_negatives=cfg.negatives))
        args, tracked = _arguments(recipe, run_dir, CrossEncoderTrainingArguments)
        trainer = RerankerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[*(callbacks or []), *tracked])
    else:
        model = SentenceTransformer(str(folder), device=device)
        model.max_seq_length = cfg.max_seq_length
        if cfg.layers:
            _keep_layers(model[0].auto_model, cfg.layers, model_id)
        before = _mrr_at_10(model, *eval_set) if eval_set else None
        loss = (losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size) if cfg.loss == "cached_mnrl"
                else losses.MultipleNegativesRankingLoss(model))
        args, tracked = _arguments(recipe, run_dir, SentenceTransformerTrainingArguments)
        trainer = EmbedderTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(columns), loss=loss,
                                  callbacks=[*(callbacks or []), *tracked])
    result = fit(trainer, resume=resume)

    model_dir = run_dir / "model"
    model.save(str(model_dir))
    write_card(model_dir, {"kind": t.objective, "base_model": model_id, "max_seq_length": cfg.max_seq_length})
    evaluation: dict = {"metrics": {}}
    if eval_set:
        after = _mrr_at_10(first_stage, *eval_set, reranker=model) if reranker else _mrr_at_10(model, *eval_set)
        evaluation = {"metrics": {"mrr@10": after}, "before": {"metrics": {"mrr@10": before}},
                      "about": f"MRR@10 of {len(eval_set[0])} consumer-style rewrites of validation questions against the "
                               f"{len(validation)} validation passages" + (
                                   f"; before: {DEFAULT_EMBEDDER} alone, after: its top {RERANK_DEPTH} re-ranked" if reranker else "")}
        log.info("validation MRR@10 (consumer rewrites): %.3f -> %.3f", before, after)
    plots = {"loss_curve": "loss_curve.png"} if plot_loss_curve(result.log_history, run_dir / "loss_curve.png") else {}
    write_report(run_dir, {"name": recipe.name, "model": model_id, "recipe": "recipe.yaml", "data": data.report | {"pairs": pairs_report},
                           "train": result.to_dict() | {"objective": t.objective, "loss": cfg.loss},
                           "eval": evaluation, "plots": plots})
    return run_dir
