"""A recipe run from top to bottom: data -> model -> train -> save -> evaluate -> report.

This is the only module that wires the stages together; each stage stays usable alone. With an
`align` section the training stage is DPO over preference pairs built from the data (or read from
pair files), starting from a base model, an SFT run's model or an SFT run's adapter.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState
from transformers import TrainerCallback

from medtune.align.dpo import MedtuneDPOTrainer, build_dpo_trainer, check_start, reward_history, sampler
from medtune.align.pairs import pair_splits
from medtune.data import prepare_data
from medtune.eval.generation import evaluate_generation
from medtune.train.perplexity import answer_perplexity
from medtune.eval.report import plot_loss_curve, write_report
from medtune.io import write_atomic
from medtune.logs import log
from medtune.models import load_start, resolve_start, run_card, write_card
from medtune.predict import Predictor
from medtune.recipe import Recipe, RecipeError, dump_recipe
from medtune.train.common import cpu_only, fit
from medtune.train.lora import check_method, quantization_config, trainable_on_cpu
from medtune.train.seq2seq import build_seq2seq_trainer
from medtune.train.sharding import evaluation_model, save_full_model
from medtune.train.sft import build_sft_trainer, prepare_tokenizer


def new_run_dir(recipe: Recipe) -> Path:
    """runs/<name>-<timestamp>, chosen once by the main process and shared with the others."""
    chosen = [""]
    if PartialState().is_main_process:
        base = Path(recipe.output_dir) / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, suffix = base, 1
        while path.exists():  # two runs started in the same second
            path, suffix = Path(f"{base}-{suffix}"), suffix + 1
        chosen = [str(path)]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def run(recipe: Recipe, *, run_dir: Path | None = None, resume: bool = False, callbacks: list[TrainerCallback] | None = None) -> Path:
    state = PartialState(cpu=cpu_only())  # joins the process group under torchrun / accelerate launch
    main = state.is_main_process
    if not main:
        log.setLevel(logging.WARNING)  # one set of status lines per run, not one per process
    if recipe.train.objective in ("embedding", "reranker"):  # retrieval models: sentence-transformers' own trainers
        from medtune.rag.finetune import train_retriever

        return train_retriever(recipe, Path(run_dir) if run_dir else new_run_dir(recipe), resume=resume, callbacks=callbacks)
    check_method(recipe)
    m = recipe.model
    start = resolve_start(m.name_or_path, m.kind, m.revision)
    if recipe.align:
        check_start(start, method=recipe.train.method)
    elif start.adapter:
        raise RecipeError(f"model: {start.adapter} is a LoRA adapter; fold it into its base with `medtune merge-adapter` "
                          "and start from the merged model")
    resolved = start.base
    if recipe.train.objective == "pretrain" and resolved.kind == "seq2seq":
        raise RecipeError(f"train.objective: pretrain is continued pre-training of causal LMs; {resolved.ref} is seq2seq")
    if main:
        log.info("model: %s", start.describe())
    run_dir = Path(run_dir) if run_dir else new_run_dir(recipe)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "recipe.yaml", dump_recipe(recipe))
    data = prepare_data(recipe.data)
    model, tokenizer = load_start(start, quantization_config(recipe))
    if recipe.train.method == "qlora":
        trainable_on_cpu(model)  # the evaluation before training must not freeze its gradients (see there)
    if recipe.align:
        trainer, data.report["pairs"] = _dpo_trainer(recipe, model, tokenizer, data.splits, run_dir, callbacks)
    else:
        build = build_seq2seq_trainer if resolved.kind == "seq2seq" else build_sft_trainer
        trainer = build(recipe, model, tokenizer, data.splits, run_dir, callbacks=callbacks)

    answers_questions = recipe.train.objective == "sft"  # pretrain: plain text, nothing to generate answers for
    compare = recipe.eval.compare_before and answers_questions
    before = _evaluate(trainer, trainer.model, tokenizer, recipe, data.splits, generate=compare) if main else {}
    result = fit(trainer, resume=resume)

    adapter = recipe.train.method != "full"
    model_dir = run_dir / ("adapter" if adapter else "model")
    save_full_model(trainer, str(model_dir))  # an adapter run saves the adapter alone, not the base
    state.wait_for_everyone()
    if main:
        p = recipe.prompt
        write_card(model_dir, run_card(template=p.template, system=p.system, generation=recipe.eval.generation.model_dump(),
                                       base=resolved, adapter=adapter))
        trained = evaluation_model(trainer, str(model_dir))
        after = (_evaluate(trainer, trained, tokenizer, recipe, data.splits, generate=answers_questions) if trained is not None
                 else {"metrics": {}, "note": "not evaluated: the gathered model does not fit one device"})
        if recipe.align:
            after["metrics"] |= _final_rewards(result.log_history)
        _write_predictions(run_dir / "predictions.jsonl", after.pop("predictions", []))
        plots = {"loss_curve": "loss_curve.png"} if plot_loss_curve(result.log_history, run_dir / "loss_curve.png") else {}
        write_report(
            run_dir,
            {
                "name": recipe.name,
                "model": start.describe(),
                "recipe": "recipe.yaml",
                "data": data.report,
                "train": result.to_dict() | {"method": recipe.train.method} | _align_summary(recipe, result.log_history),
                "eval": _before_after(before, after, recipe.eval.questions),
                "plots": plots,
            },
        )
    state.wait_for_everyone()
    return run_dir


def _dpo_trainer(recipe: Recipe, model, tokenizer, splits, run_dir: Path, callbacks) -> tuple[MedtuneDPOTrainer, dict]:
    """Preference pairs from the prepared splits, then a DPO trainer over them; also the pairs report."""
    # The chat template and pad token first: sampled answers are generated from the prompts DPO trains on.
    new_tokens = prepare_tokenizer(tokenizer, model)
    cfg = recipe.align.pairs
    generate = sampler(model, tokenizer, recipe.prompt, cfg) if "sampled" in cfg.rejected else None
    pairs, report = pair_splits(splits, cfg, generate)
    trainer = build_dpo_trainer(recipe, model, tokenizer, pairs, run_dir, new_token_ids=new_tokens, callbacks=callbacks)
    return trainer, report | {"dropped_too_long": trainer.too_long}


def _align_summary(recipe: Recipe, log_history: list[dict]) -> dict:
    """DPO settings and reward accuracy / margin per logging and evaluation step, for the report's train section."""
    if recipe.align is None:
        return {}
    a = recipe.align
    return {"align": {"method": a.method, "beta": a.beta, "loss_type": a.loss_type}, "rewards": reward_history(log_history)}


def _final_rewards(log_history: list[dict]) -> dict:
    """Reward accuracy and margin of the last evaluation on the validation pairs, shown with the other metrics."""
    evals = reward_history(log_history)["eval"]
    return {"reward_accuracy": evals[-1]["accuracy"], "reward_margin": evals[-1]["margin"]} if evals else {}


def _evaluate(trainer, model, tokenizer, recipe: Recipe, splits, *, generate: bool) -> dict:
    """Held-out perplexity of `model` on the trainer's validation set, and (with `generate`) generation
    metrics and answers to the recipe's questions."""
    out: dict = {"metrics": {}}
    if "perplexity" in recipe.eval.metrics and trainer.eval_dataset is not None:
        out["perplexity"] = _perplexity(trainer, model)
        out["metrics"]["perplexity"] = out["perplexity"]["perplexity"]
    if generate:
        p = recipe.prompt
        predictor = Predictor(model, tokenizer, template=p.template, system=p.system, generation=recipe.eval.generation)
        split = recipe.eval.split if len(splits[recipe.eval.split]) else "validation"
        generated = evaluate_generation(predictor, splits[split], recipe.eval, split=split)
        out |= generated | {"metrics": out["metrics"] | generated["metrics"]}
        if recipe.eval.questions:
            out["answers"] = predictor.predict(recipe.eval.questions, batch_size=recipe.eval.batch_size)
    return out


def _before_after(before: dict, after: dict, questions: list[str]) -> dict:
    """The report's eval section: the trained model's results, with the starting model's beside them."""
    evaluation = {k: v for k, v in after.items() if k != "answers"}
    if before:
        evaluation["before"] = {k: before[k] for k in ("metrics", "perplexity") if k in before}
    if questions and "answers" in after:
        evaluation["answers"] = [
            {"question": q, "after": after["answers"][i]} | ({"before": before["answers"][i]} if "answers" in before else {})
            for i, q in enumerate(questions)
        ]
    return evaluation


def _perplexity(trainer, model) -> dict:
    # A DPO trainer's eval set holds pairs: perplexity is that of their chosen (reference) answers.
    ds, collator = trainer.perplexity_inputs() if isinstance(trainer, MedtuneDPOTrainer) else (trainer.eval_dataset, trainer.data_collator)
    return answer_perplexity(model, ds, collator, batch_size=trainer.args.per_device_eval_batch_size)


def _write_predictions(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
