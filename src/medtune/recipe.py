"""The one recipe schema: a YAML file, validated before any model or data is loaded.

A recipe says which model to start from, which data to read and how to prompt it, how to
train, how to evaluate, where to write the run and where to log it. Every field can be
overridden from the command line with `--set dotted.key=value`.
"""

from __future__ import annotations

import os
import reprlib
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from medtune.io import read_yaml_mapping


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file, the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name_or_path: str = Field(description="Hub id (e.g. google/flan-t5-base) or local directory")
    kind: Literal["auto", "seq2seq", "causal"] = "auto"
    revision: str | None = None


class SourceConfig(_Strict):
    loader: str = Field(description="Loader name: medquad, csv, json, jsonl")
    path: str
    fields: dict[str, str] = Field(
        default_factory=dict, description="record field -> column in the file, e.g. {question: Prompt}"
    )
    weight: float = Field(1.0, gt=0)
    language: str = "en"
    on_bad_row: Literal["error", "skip"] = "error"


class SplitConfig(_Strict):
    validation: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.05, ge=0, lt=1)
    group_by: Literal["focus", "none"] = "focus"
    seed: int = 42

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must be below 1")
        return self


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    split: SplitConfig = SplitConfig()
    dedup: bool = True
    max_examples: int | None = Field(None, gt=0, description="Cap on training examples after splitting")
    max_eval_examples: int | None = Field(None, gt=0, description="Cap on validation/test examples")


class PromptConfig(_Strict):
    template: str = "{question}"
    system: str | None = Field(None, description="causal LMs: system message of every chat")

    @field_validator("template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("must contain the placeholder {question}")
        return v


class LoraConfig(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt; all-linear = every linear layer but the output head"
    )


class RetrieverConfig(_Strict):
    """train.objective embedding or reranker: a retrieval model trained on question -> passage pairs from the QA
    data. embedding: a sentence-transformers bi-encoder, the other passages of a batch (and one mined hard negative)
    as negatives; reranker: a cross-encoder scoring (question, passage) as relevant or not (the hard negative)."""

    loss: Literal["mnrl", "cached_mnrl", "bce"] = Field(
        "mnrl", description="MultipleNegativesRankingLoss (the batch's other passages are negatives too), or its cached "
                            "variant (large batches in little memory); reranker only: bce, binary cross-entropy on "
                            "(question, passage, relevant or not) rows")
    mini_batch_size: int = Field(16, gt=0, description="cached_mnrl: rows per forward pass")
    negatives: int = Field(4, ge=1, description="reranker, mnrl: other passages of the batch scored per question, besides "
                                                "the hard negatives (at least 1: sentence-transformers' loss samples them)")
    hard_negatives: bool = Field(True, description="add, per pair, the best-ranked passage of another focus (mined with a medtune index)")
    focus_negatives: int = Field(0, ge=0, description="add, per pair, up to this many best-ranked passages of the same focus "
                                                      "that answer another question (a re-ranker learns which of a disease's "
                                                      "passages answers: the symptoms, not the causes)")
    layers: int | None = Field(None, gt=0, description="keep only the first N transformer layers of the starting model: a "
                                                        "shallower, faster model (a re-ranker scores 20 pairs per query)")
    rewrites: int = Field(2, ge=0, description="consumer-style rewrites of each question (narrative, typos, lower case, a second question) as extra anchors")
    max_seq_length: int = Field(128, gt=0, description="tokens per text (embedding: the index embeds passages with the same "
                                                       "limit); reranker: per question + passage pair")


class TrainConfig(_Strict):
    objective: Literal["sft", "pretrain", "embedding", "reranker"] = Field(
        "sft", description="sft: loss on the answers of chat-formatted QA pairs; pretrain: continued pre-training, "
                           "loss on every token of plain text (text sources; QA records become question + answer); "
                           "embedding / reranker: a retrieval embedder or re-ranker (sentence-transformers) trained on "
                           "question -> passage pairs"
    )
    retriever: RetrieverConfig = RetrieverConfig()
    method: Literal["full", "lora", "qlora"] = Field(
        "full", description="full fine-tuning, LoRA adapters, or LoRA on a 4-bit NF4 base (bitsandbytes; CUDA or CPU)"
    )
    lora: LoraConfig = LoraConfig()
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, description="Overrides epochs when > 0")
    learning_rate: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler: str = "linear"
    max_source_length: int = Field(512, gt=0)
    max_target_length: int = Field(512, gt=0)
    max_length: int = Field(1024, gt=0, description="causal LMs: prompt + answer tokens per example")
    packing: bool = Field(False, description="causal LMs: pack several examples into each max_length row")
    gradient_checkpointing: bool = False
    group_by_length: bool = Field(True, description="Batch examples of similar length to cut padding")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    logging_steps: int = Field(10, gt=0)
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = 2
    eval_steps: int | None = Field(None, gt=0, description="Validation loss every N steps while training (default: none; the validation split is scored once, after training)")
    seed: int = 42
    num_workers: int = Field(0, ge=0)


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, gt=0)
    num_beams: int = Field(1, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    no_repeat_ngram_size: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)


class EvalConfig(_Strict):
    metrics: list[Literal["perplexity", "rouge", "bleu", "chrf"]] = ["perplexity", "rouge", "bleu", "chrf"]
    split: Literal["validation", "test"] = "test"
    max_samples: int | None = Field(200, gt=0, description="Generate for at most this many examples")
    batch_size: int = Field(8, gt=0)
    generation: GenerationConfig = GenerationConfig()
    compare_before: bool = Field(False, description="also evaluate the starting model, for a before/after table")
    questions: list[str] = Field(default_factory=list, description="fixed questions answered in the report")


class PairsConfig(_Strict):
    """How preference pairs are built from QA records: chosen = the reference answer."""

    rejected: list[Literal["sampled", "same_focus", "corrupted"]] = Field(
        default_factory=lambda: ["same_focus", "corrupted"],
        min_length=1,
        description="one pair per record and strategy: sampled = a generation of the starting model; "
        "same_focus = the answer to another question about the same focus; corrupted = the answer with its focus "
        "swapped for another record's (wrong_entity) or cut short (truncate)",
    )
    corruptions: list[Literal["wrong_entity", "truncate"]] = Field(
        default_factory=lambda: ["wrong_entity", "truncate"],
        min_length=1,
        description="corrupted: the kinds to try, in order; the first that applies to a record is used",
    )
    keep_fraction: float = Field(0.5, gt=0, lt=1, description="truncate: the share of sentences (or words) kept")
    seed: int = 0
    batch_size: int = Field(8, gt=0, description="sampled: questions generated at once")
    generation: GenerationConfig = GenerationConfig(do_sample=True, top_p=0.95, max_new_tokens=128)

    @field_validator("rejected", "corruptions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each entry once (got {v})")
        return v


# TRL 1.16's DPOConfig.loss_type values.
DPO_LOSSES = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]


class AlignConfig(_Strict):
    """Preference alignment after (or instead of) supervised fine-tuning; prompt + answer tokens per sequence
    are capped by `train.max_length`, the only length TRL's DPOTrainer takes."""

    method: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference; higher = closer")
    loss_type: DPO_LOSSES = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust and exo_pair losses: assumed label noise")
    pairs: PairsConfig = PairsConfig()

    @model_validator(mode="after")
    def _exo_needs_smoothing(self) -> AlignConfig:
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise ValueError("loss_type=exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        return self


class TrackingConfig(_Strict):
    backend: Literal["tensorboard", "wandb", "mlflow", "none"] = "tensorboard"
    project: str = "medtune"


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelConfig
    data: DataConfig
    prompt: PromptConfig = PromptConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    align: AlignConfig | None = Field(None, description="preference alignment (DPO); none = supervised fine-tuning")
    output_dir: str = "runs"

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        # `model: google/flan-t5-base` and `--set model=./tiny` name the weights only.
        return {"name_or_path": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _align_fits(self) -> Recipe:
        if self.train.objective in ("embedding", "reranker") and (self.train.method != "full" or self.align):
            raise ValueError(f"train.objective: {self.train.objective} fine-tunes a whole sentence-transformers model: "
                             "train.method must be full, and there is no align step")
        if self.train.objective == "embedding" and self.train.retriever.loss == "bce":
            raise ValueError("train.retriever.loss: bce is for train.objective: reranker; an embedding model trains with mnrl or cached_mnrl")
        if self.train.objective == "reranker" and not self.train.retriever.hard_negatives:
            raise ValueError("train.objective: reranker learns relevant from not relevant: train.retriever.hard_negatives "
                             "must be true (its only negatives)")
        if self.train.objective == "pretrain" and self.model.kind == "seq2seq":
            raise ValueError("train.objective: pretrain is continued pre-training of causal LMs; model.kind is seq2seq")
        if self.align is None:
            return self
        if self.train.objective == "pretrain":
            raise ValueError("align: DPO needs question-answer pairs; set train.objective: sft")
        if self.model.kind == "seq2seq":
            raise ValueError("align: DPO trains causal LMs; model.kind is seq2seq")
        if self.train.packing:
            raise ValueError("align: DPO rows are (prompt, answer) pairs and cannot be packed; set train.packing: false")
        if self.data.dedup and any(s.loader == "pairs" for s in self.data.sources):
            # Dedup keys on (question, answer): it would keep one pair per (prompt, chosen) and drop the rest.
            raise ValueError("align: pair files repeat a (prompt, chosen) with different rejected answers; "
                             "set data.dedup: false")
        return self


# What an error quotes of a wrong value: its start, as one field may hold megabytes. reprlib stops at
# these limits instead of writing the whole value out first (which nested aliases make huge).
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother = 3, 6, 6, 100, 100
MAX_QUOTE, MAX_PROBLEMS = 200, 20


def _quote(value: Any) -> str:
    text = _QUOTE.repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def format_errors(err: ValidationError, origin: str, what: str = "recipe") -> str:
    """A pydantic error as one line per field (the first MAX_PROBLEMS): where, what is wrong, and what was given."""
    lines = [f"{origin}: invalid {what} ({err.error_count()} problem(s))"]
    for e in err.errors()[:MAX_PROBLEMS]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  {where}: {msg} (got {_quote(e.get('input'))})" if e["type"] != "missing" else f"  {where}: {msg}")
    if err.error_count() > MAX_PROBLEMS:
        lines.append(f"  ...and {err.error_count() - MAX_PROBLEMS} more")
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides; values are parsed as YAML (numbers, lists, null).

    A numeric part indexes a list: `data.sources.0.path=…`.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {item!r}: expected dotted.key=value")
        node: Any = data
        *parents, leaf = key.split(".")
        for part in parents:
            if isinstance(node, list):
                node = node[_list_index(node, part, item)]
                continue
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"--set {item!r}: {part!r} is not a section")
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(node, list):
            node[_list_index(node, leaf, item)] = value
        else:
            node[leaf] = value
    return data


def _list_index(items: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise RecipeError(f"--set {item!r}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    data = read_yaml_mapping(path, "recipe file", RecipeError)
    return recipe_from_dict(apply_overrides(data, overrides or []), origin=str(path))


def recipe_from_dict(data: dict[str, Any], origin: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_errors(err, origin)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# Merging: a recipe of its own (a merge reads no data and trains nothing), loaded by load_merge_recipe.
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


class MergeSource(_Strict):
    model: str = Field(description="hub id, local model directory or medtune run directory")
    revision: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # `- BioMistral/BioMistral-7B` names the model only.
        return {"model": v} if isinstance(v, str) else v


class MergeModel(MergeSource):
    weight: float = Field(1.0, description="linear: share of the average; task-vector methods: scale of its task vector")
    density: float = Field(1.0, gt=0, le=1, description="ties / dare_*: share of its task vector kept")


class MergeConfig(_Strict):
    """Which models to merge and how; every model must share the base's architecture and vocabulary."""

    method: Literal["linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
    models: list[MergeModel] = Field(min_length=1)
    base_model: MergeSource | None = Field(
        None, validate_default=True, description="task-vector methods: the model every task vector is taken from"
    )
    t: float | None = Field(None, ge=0, le=1, validate_default=True, description="slerp: 0 = first model, 1 = second")
    majority_sign: Literal["total", "frequency"] = Field(
        "total", description="ties / dare_ties: elect each element's sign by summed value or by vote count"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="of the saved weights (math is fp32)")
    seed: int = Field(0, description="dare_*: seed of the random drops")
    shard_size_mb: float = Field(2000, gt=0, description="start a new output shard after this many MB")
    backend: Literal["medtune", "mergekit"] = Field("medtune", description="mergekit: pip install mergekit==0.1.5 first")

    @field_validator("models")
    @classmethod
    def _models_fit_method(cls, v: list[MergeModel], info: ValidationInfo) -> list[MergeModel]:
        method = info.data.get("method")
        if method == "slerp" and len(v) != 2:
            raise ValueError(f"slerp interpolates between exactly two models (got {len(v)})")
        if method == "linear" and len(v) < 2:
            raise ValueError("linear averages two or more models")
        if method == "linear" and any(m.weight <= 0 for m in v):
            raise ValueError("linear: every weight must be positive (weights are normalized to sum to 1)")
        if method == "slerp" and any(m.weight != 1 for m in v):
            raise ValueError("slerp: set t, not per-model weights")
        if method not in ("ties", "dare_ties", "dare_linear") and any(m.density != 1 for m in v):
            raise ValueError(f"density applies to ties, dare_ties and dare_linear only (method is {method})")
        return v

    @field_validator("base_model")
    @classmethod
    def _base_fits_method(cls, v: MergeSource | None, info: ValidationInfo) -> MergeSource | None:
        method, models = info.data.get("method"), info.data.get("models")
        if method in TASK_VECTOR_METHODS and v is None:
            raise ValueError(f"{method} merges task vectors (model - base): set base_model")
        if method in ("linear", "slerp") and v is not None:
            raise ValueError(f"{method} combines the models themselves and takes no base_model; list it under models")
        if v is not None and models and all(m.model == v.model for m in models):
            raise ValueError("every model is the base; list at least one other model")
        return v

    @field_validator("t")
    @classmethod
    def _t_for_slerp(cls, v: float | None, info: ValidationInfo) -> float | None:
        method = info.data.get("method")
        if method == "slerp" and v is None:
            raise ValueError("slerp needs t (0 = first model, 1 = second)")
        if method not in ("slerp", None) and v is not None:
            raise ValueError(f"t applies to slerp only (method is {method})")
        return v

    @field_validator("backend")
    @classmethod
    def _mergekit_signs(cls, v: str, info: ValidationInfo) -> str:
        if v == "mergekit" and info.data.get("majority_sign") == "frequency":
            raise ValueError("mergekit elects signs by sum only; majority_sign: frequency needs backend: medtune")
        return v


class MergeRecipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    merge: MergeConfig
    output_dir: str = Field("runs", description="the merged model goes to OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS")


def load_merge_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> MergeRecipe:
    data = apply_overrides(read_yaml_mapping(path, "merge recipe file", RecipeError), overrides or [])
    try:
        return MergeRecipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(format_errors(err, str(path), "merge recipe")) from None
