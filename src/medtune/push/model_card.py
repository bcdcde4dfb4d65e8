"""The README.md of a model repository, written from what medtune recorded: base model and license, the
training data and its terms, the recipe, training figures, evaluation results (as `model-index` entries,
with their bootstrap intervals in the text), quantization or merge details, and what the model is for.

Every figure comes from a file medtune wrote; what is not recorded is said to be unknown."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData, metadata_load, try_to_load_from_cache

from medtune.models import MODEL_CARD
from medtune.push.artifacts import ModelArtifact, PushError, RunSource, run_record
from medtune.push.clean import clean_yaml
from medtune.push.licenses import MODEL_LICENSES, UNKNOWN, DataLicense, by_name, by_path, card_license, combined, of_source

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# report key -> (metric type, metric config, name a reader knows)
METRICS = {
    "perplexity": ("perplexity", None, "perplexity"), "rouge1": ("rouge", "rouge1", "ROUGE-1"),
    "rouge2": ("rouge", "rouge2", "ROUGE-2"), "rougeL": ("rouge", "rougeL", "ROUGE-L"),
    "rougeLsum": ("rouge", "rougeLsum", "ROUGE-Lsum"), "bleu": ("bleu", None, "BLEU"), "chrf": ("chrf", None, "chrF"),
    "accuracy": ("accuracy", None, "accuracy"), "accuracy_norm": ("accuracy", "length-normalised", "accuracy (length-normalised)"),
    "macro_f1": ("f1", "macro", "macro-F1"), "reward_accuracy": ("accuracy", "dpo-reward", "DPO reward accuracy"),
    "reward_margin": ("reward_margin", None, "DPO reward margin"), "eval_loss": ("loss", None, "validation loss"),
}
PIPELINES = {"causal": "text-generation", "seq2seq": "text2text-generation", "embedding": "sentence-similarity",
             "reranker": "text-ranking"}
PERCENT = ("accuracy", "accuracy_norm", "macro_f1", "reward_accuracy")  # 0-1 in reports, shown as %


def is_hub_id(ref: str | None) -> bool:
    return bool(ref) and HUB_ID.fullmatch(ref) is not None and not Path(ref).is_absolute()


def model_license(ref: str) -> str:
    """A model's license as its own card states it (a local folder's README.md, or the Hugging Face cache's
    copy of a hub model's); `unknown` when there is none to read."""
    if ref in MODEL_LICENSES:
        return MODEL_LICENSES[ref]
    readme = Path(ref) / "README.md" if Path(ref).is_dir() else None
    if readme is None and is_hub_id(ref):
        cached = try_to_load_from_cache(ref, "README.md")
        readme = Path(cached) if isinstance(cached, str) else None
    meta = (metadata_load(readme) or {}) if readme and readme.is_file() else {}
    found = meta.get("license")
    found = found[0] if isinstance(found, list) and len(found) == 1 else found
    return found.lower() if isinstance(found, str) and found else "unknown"


@dataclass
class Lineage:
    bases: list[str]  # what the model derives from, as recorded (hub ids or local paths)
    relation: str  # the Hub's base_model_relation: adapter, finetune, merge, quantized
    model_kind: str  # causal, seq2seq, embedding, reranker


def lineage(a: ModelArtifact) -> Lineage:
    kind = a.card.get("kind") or _config_kind(a.folder)
    if a.merge:
        refs = [m["model"] for m in a.merge.get("models", [])]
        base = a.merge.get("base_model")
        return Lineage(([base["model"]] if base else []) + refs, "merge", kind)
    if a.kind == "quantized" and not a.card.get("base_model"):  # a model quantized as it was, not a fine-tune of it
        source = a.card.get("quantization", {}).get("source_model") or (a.quantize or {}).get("source", {}).get("model")
        return Lineage([source] if source else [], "quantized", kind)
    base = a.card.get("base_model")
    return Lineage([base] if base else [], "adapter" if a.kind == "adapter" else "finetune", kind)


def _config_kind(folder: Path) -> str:
    config = folder / "config.json"
    encoder_decoder = config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("is_encoder_decoder")
    return "seq2seq" if encoder_decoder else "causal"


def model_card(a: ModelArtifact, repo: str, secrets: list[str]) -> str:
    """README.md for `a` published as `repo`."""
    lin = lineage(a)
    run = run_record(a.run) if a.run else None
    sources = run[2] if run else []
    data = [(s, of_source(s.loader, s.path)) for s in sources]
    licenses = [model_license(b) for b in lin.bases] or ["unknown"]
    license_id = combined(licenses)
    results = _run_results(run[1], data) if a.is_run else []
    for folder, report in a.evals:
        results += _suite_results(folder.name, report)
    hub_bases = [b for b in lin.bases if is_hub_id(b)]
    meta = {
        "base_model": (hub_bases[0] if len(hub_bases) == 1 else hub_bases) or None,
        "base_model_relation": lin.relation if hub_bases else None,
        "datasets": sorted({d.hub for _, d in data if d.hub}) or None,
        "language": sorted({s.language for s in sources}) or None,
        "library_name": _library(a, lin),
        "pipeline_tag": PIPELINES.get(lin.model_kind),
        "tags": _tags(a, run),
        "model_name": repo.split("/")[1] if results else None,  # the name of the model-index entry
        "eval_results": [r for r, _ in results] or None,
    } | card_license(license_id)
    card_data = ModelCardData(**{k: v for k, v in meta.items() if v is not None})
    sections = [
        f"# {repo.split('/')[1]}", "",
        _summary(a, lin, hub_bases), "",
        *_base_section(lin, licenses, license_id),
        *_use_section(a, lin, repo),
        *_data_section(data, sources),
        *_training_section(a, run),
        *_results_section(results),
        *_quantization_section(a),
        *_merge_section(a),
        *_medical_section(a, results, run),
        *_recipe_section(a, secrets),
        *_files_section(a),
    ]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(sections).rstrip() + "\n"


def _library(a: ModelArtifact, lin: Lineage) -> str | None:
    if lin.model_kind in ("embedding", "reranker"):
        return "sentence-transformers"
    if a.kind == "adapter":
        return "peft"
    fmt = a.card.get("quantization", {}).get("format")
    # quanto folders load through optimum-quanto (medtune does it), GGUF files through llama.cpp / Ollama.
    return None if fmt in ("quanto", "gguf") else "transformers"


def _tags(a: ModelArtifact, run: tuple | None) -> list[str]:
    tags = ["medtune", "medical"]
    method = (run[1].get("train") or {}).get("method") if run else None
    if a.kind == "adapter" or method in ("lora", "qlora"):
        tags.append(method or "lora")
    if run and (run[1].get("train") or {}).get("align"):
        tags.append(run[1]["train"]["align"].get("method", "dpo"))
    q = a.card.get("quantization")
    if q:
        tags += ["quantized", q["method"]] + (["gguf"] if q.get("format") == "gguf" else [])
    if a.merge:
        tags += ["merge", a.merge.get("method", "")]
    return [t for t in dict.fromkeys(tags) if t]


def _summary(a: ModelArtifact, lin: Lineage, hub_bases: list[str]) -> str:
    base = ", ".join(f"`{b}`" for b in hub_bases) or "a base model that is not on the Hub (see below)"
    what = {
        "adapter": f"A LoRA adapter for {base}, trained with medtune; it needs that base model to run.",
        "full": f"{base} fine-tuned with medtune (all weights).",
        "merged-adapter": f"{base} with a LoRA adapter trained by medtune folded into its weights: a standalone model.",
        "merge": f"A merge of {len(lin.bases)} models ({(a.merge or {}).get('method')}) made with `medtune merge`.",
        "quantized": f"A quantized copy ({a.card.get('quantization', {}).get('method')}) of "
                     + (f"a medtune fine-tune of {base}." if lin.relation == "finetune" else f"{base}."),
    }[a.kind]
    return what + " For medical question answering research; its answers are not medical advice."


def _base_section(lin: Lineage, licenses: list[str], license_id: str) -> list[str]:
    lines = ["## Base model and license", ""]
    if not lin.bases:
        lines.append("- Base model: **unknown** — medtune recorded none for this model.")
    for ref, lic in zip(lin.bases, licenses):
        where = f"[`{ref}`](https://huggingface.co/{ref})" if is_hub_id(ref) else \
            f"**not a Hub model**: the local folder `{Path(ref).name}` on the machine that made this model"
        known = "**unknown** (no card stating one was found)" if lic == "unknown" else f"`{lic}`"
        lines.append(f"- Base model: {where}; its license: {known}")
    if license_id == "unknown":
        lines.append("- License of these weights: **unknown**. medtune could not determine the base model's license; "
                     "do not assume these weights may be used or redistributed until you have checked it.")
    elif license_id == "other":
        lines.append(f"- License of these weights: `other` — the models it derives from carry "
                     f"{', '.join(sorted(set(licenses)))}; each applies to its part.")
    else:
        lines.append(f"- License of these weights: `{license_id}`, the base model's. The training data's terms "
                     "(below) apply to the data.")
    return [*lines, ""]


def _use_section(a: ModelArtifact, lin: Lineage, repo: str) -> list[str]:
    name = repo.split("/")[1]
    if lin.model_kind in ("embedding", "reranker"):  # a retrieval model: it ranks passages, it does not answer
        use = (f"medtune index build MEDQUAD_DIR --out indexes/medquad --embedder ./models/{name}"
               if lin.model_kind == "embedding" else
               f'medtune ask "What causes gout?" --index indexes/medquad --reranker ./models/{name}')
        return ["## How to use", "", "```bash", f"hf download {repo} --local-dir ./models/{name}", use, "```", "",
                "It loads with sentence-transformers too (`SentenceTransformer` / `CrossEncoder`).", ""]
    lines = ["## How to use", "", "With medtune, which applies the prompt format and system message this model was "
             "trained with (`medtune.json`):", "", "```bash",
             f"hf download {repo} --local-dir ./models/{name}",
             f'medtune predict ./models/{name} "What are the symptoms of gout?"',
             f"medtune serve --model ./models/{name}   # OpenAI-compatible server with medtune's safety layer", "```", ""]
    fmt = a.card.get("quantization", {}).get("format")
    if fmt == "gguf":
        lines += ["With llama.cpp or Ollama (the `Modelfile` carries the system prompt):", "", "```bash",
                  f"ollama create {name} -f ./models/{name}/Modelfile && ollama run {name}", "```", ""]
    elif fmt == "quanto":
        lines += ["The weights are optimum-quanto tensors (`quanto_model.safetensors`, `quanto_qmap.json`); "
                  "medtune loads them as above.", ""]
    elif a.kind == "adapter" and lin.model_kind == "causal":
        lines += ["With PEFT (the base model is downloaded from the Hub):", "", "```python",
                  "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", ""]
    elif lin.model_kind in ("causal", "seq2seq") and fmt != "quanto":
        auto = "AutoModelForCausalLM" if lin.model_kind == "causal" else "AutoModelForSeq2SeqLM"
        lines += ["With transformers:", "", "```python", f"from transformers import {auto}, AutoTokenizer",
                  f'model = {auto}.from_pretrained("{repo}")', f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", ""]
    if a.card.get("system") or a.card.get("template"):
        lines += [f"Prompt template: `{a.card.get('template')}`; system message: "
                  f"{json.dumps(a.card.get('system'), ensure_ascii=False) if a.card.get('system') else 'none'}.", ""]
    return lines


def _data_section(data: list[tuple[RunSource, DataLicense]], sources: list[RunSource]) -> list[str]:
    lines = ["## Training data", ""]
    if not data:
        return [*lines, "Not recorded with this model: the run that trained it is not part of what was published, so "
                "its data and their licenses are **unknown** here.", ""]
    lines += ["| source | dataset | records used for training | license | terms |", "|---|---|---:|---|---|"]
    for s, d in data:
        used = f"{s.train_records:,}" if s.train_records is not None else "not recorded"
        lines.append(f"| `{s.name}` ({s.loader}) | {d.name} | {used} | `{d.license}` | {d.terms} |")
    unknown = [s.name for s, d in data if d is UNKNOWN]
    if unknown:
        lines += ["", f"The license of {', '.join(f'`{n}`' for n in unknown)} is **unknown**: it is not a dataset "
                  "medtune knows. Check its terms before using this model."]
    return [*lines, ""]


def _training_section(a: ModelArtifact, run: tuple | None) -> list[str]:
    if not run:
        return []
    report = run[1]
    train = report.get("train") or {}
    losses = [e["loss"] for e in train.get("log_history") or [] if _finite(e.get("loss"))]
    align = train.get("align")
    rows = [
        ("method", f"{train.get('method', 'not recorded')}" + (f" + {align['method']} (beta {align.get('beta')})" if align else "")),
        ("steps", train.get("global_step")),
        ("training tokens", _number(train.get("train_tokens"), "{:,}")),
        ("final logged loss", f"{losses[-1]:.4f}" if losses else None),
        ("mean training loss", _number(train.get("train_loss"), "{:.4f}")),
        ("training time", _number(train.get("runtime_s"), "{:.0f} s")),
        ("throughput", _number(train.get("train_tokens_per_s"), "{:,.0f} tokens/s")),
    ]
    lines = ["## Training", "", *(f"- {k}: {v}" for k, v in rows if v is not None)]
    sizes = (report.get("data") or {}).get("sizes")
    if sizes:
        lines.append(f"- examples per split: {', '.join(f'{k} {v:,}' for k, v in sizes.items())}")
    if a.is_run and (a.run / "loss_curve.png").is_file():
        lines += ["", "![loss curve](run/loss_curve.png)"]
    return [*lines, ""]


def _metric(key: str) -> tuple[str, str | None, str]:
    return METRICS.get(key, (key, None, key))


def _run_results(report: dict, data: list[tuple[RunSource, DataLicense]]) -> list[tuple[EvalResult, str]]:
    """The run's held-out evaluation (its validation/test split) as model-index entries."""
    ev = report.get("eval") or {}
    hubs = {d.hub for _, d in data}
    dataset_type = hubs.pop() if len(hubs) == 1 and None not in hubs else "+".join(s.name for s, _ in data) or "training data"
    names = " + ".join(s.name for s, _ in data) or "training data"
    out = []
    for key, value in (ev.get("metrics") or {}).items():
        if not _finite(value):
            continue
        mtype, config, pretty = _metric(key)
        # Perplexity is over the validation split's answer tokens; generation metrics over eval.split's answers.
        if key == "perplexity":
            split, size = "validation", f"{(ev.get('perplexity') or {}).get('tokens', '?'):,} answer tokens"
        else:
            split, size = ev.get("split") or "validation", f"{ev.get('n', '?')} answers"
        result = EvalResult(task_type="text-generation", task_name="Medical question answering (held-out answers)",
                            dataset_type=dataset_type, dataset_name=f"{names}, held-out {split} split ({size})",
                            dataset_split=split, metric_type=mtype, metric_config=config, metric_name=pretty,
                            metric_value=value)
        before = ((ev.get("before") or {}).get("metrics") or {}).get(key)
        out.append((result, f"before training {_show(key, before)}" if _finite(before) else ""))
    return out


def _suite_results(folder: str, report: dict) -> list[tuple[EvalResult, str]]:
    """A `medtune eval` report's tasks as model-index entries; intervals go into the text."""
    limit = (report.get("settings") or {}).get("limit")
    shots = (report.get("settings") or {}).get("num_fewshot", 0)
    out = []
    for task, t in (report.get("tasks") or {}).items():
        d = by_name(task) or by_path(task) or UNKNOWN
        lang = task.rsplit("_", 1)[1] if task.rsplit("_", 1)[-1] in ("es", "en", "pt") else None
        split = m.group(1) if (m := re.search(r"\((\w+) split\)", t.get("note") or "")) else None
        metrics = t.get("metrics") or {}
        n = metrics.get("n", t.get("n"))
        name = f"{d.name if d is not UNKNOWN else task}" + (f" ({lang})" if lang else "") + \
            (f", first {limit} items" if limit else "") + (f", {n} scored" if n else "")
        for key, m in metrics.items():
            value, ci = (m.get("value"), m.get("ci95")) if isinstance(m, dict) else (m, None)
            if key in ("n", "by_category") or not _finite(value):
                continue
            mtype, config, pretty = _metric(key)
            result = EvalResult(task_type="multiple-choice" if t.get("kind") == "choice" else "text-generation",
                                task_name=t.get("about") or task, dataset_type=d.hub or task, dataset_name=name,
                                dataset_config=lang, dataset_split=split, metric_type=mtype, metric_config=config,
                                metric_name=f"{pretty} ({shots}-shot)" if t.get("kind") == "choice" else pretty,
                                metric_value=value)
            text = f"95% bootstrap interval {_show(key, ci[0])} – {_show(key, ci[1])}" if ci else ""
            out.append((result, text))
    return out


def _number(value, fmt: str) -> str | None:
    return fmt.format(value) if _finite(value) else None


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _show(key: str, value: float) -> str:
    if key in PERCENT:
        return f"{100 * value:.1f}%"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"


def _results_section(results: list[tuple[EvalResult, str]]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not results:
        return [*lines, "No evaluation was recorded with this model.", ""]
    lines += ["| task | dataset | split | metric | value | notes |", "|---|---|---|---|---:|---|"]
    for r, note in results:
        key = next((k for k, v in METRICS.items() if (v[0], v[1]) == (r.metric_type, r.metric_config)), r.metric_type)
        lines.append(f"| {r.task_name} | {r.dataset_name} | {r.dataset_split or '–'} | {r.metric_name} | "
                     f"{_show(key, r.metric_value)} | {note} |")
    return [*lines, "", "The same values are in this card's `model-index` metadata.", ""]


def _quantization_section(a: ModelArtifact) -> list[str]:
    q = a.card.get("quantization")
    if not q:
        return []
    library, version = q.get("library") or "", q.get("library_version") or ""
    lines = ["## Quantization", "", f"- method: `{q['method']}` ({q.get('bits')}-bit, "
             f"{version if version.startswith(library) else f'{library} {version}'.strip()})"]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in q.items()
              if k in ("group_size", "kept_in_int8", "dtype", "file", "outtype", "quant_type", "converter") and v]
    report = a.quantize or {}
    src, out, cmp = report.get("source") or {}, report.get("quantized") or {}, report.get("comparison") or {}
    if cmp:
        before, after = src.get("weight_file_bytes", 0) / 1e6, out.get("weight_file_bytes", 0) / 1e6
        lines.append(f"- weight files: {before:,.1f} MB → {after:,.1f} MB ({cmp['size_ratio']:.2f}× smaller)")
    if "perplexity_change_pct" in cmp:
        lines.append(f"- held-out perplexity ({src.get('texts')} texts, {src.get('tokens'):,} tokens): {src['perplexity']:.3f} → "
                     f"{out['perplexity']:.3f} ({cmp['perplexity_change_pct']:+.2f}%)")
    elif report:
        lines.append("- perplexity change: not measured (no evaluation texts were given)")
    if report.get("note"):
        lines.append(f"- {report['note']}")
    return [*lines, ""]


def _merge_section(a: ModelArtifact) -> list[str]:
    if a.merge:
        m = a.merge
        lines = ["## Merge", "", f"- method: `{m.get('method')}` (backend {m.get('backend')}), saved in {m.get('dtype')}"]
        if m.get("base_model"):
            lines.append(f"- base (task vectors are taken from it): `{_ref(m['base_model']['model'])}`")
        for s in m.get("models", []):
            extra = f", density {s['density']}" if m.get("method") in ("ties", "dare_ties", "dare_linear") else ""
            lines.append(f"- model `{_ref(s['model'])}`: weight {s.get('weight')}{extra}")
        if m.get("t") is not None:
            lines.append(f"- t: {m['t']}")
        copied = len(m.get("copied_tensors") or [])
        lines.append(f"- {m.get('merged_tensors')} tensors merged, {copied} copied, in {m.get('seconds')} s")
        return [*lines, ""]
    if a.card.get("merged_from"):
        return ["## Merge", "", f"A LoRA adapter (`{Path(a.card['merged_from']).parent.name}`) folded into a "
                "full-precision (fp32) copy of its base with `medtune merge-adapter` (PEFT's merge_and_unload).", ""]
    return []


def _ref(ref: str) -> str:
    return ref if is_hub_id(ref) else Path(ref).name


def _medical_section(a: ModelArtifact, results: list[tuple[EvalResult, str]], run: tuple | None) -> list[str]:
    lines = ["## Medical use", "",
             "- Intended use: research on medical question answering and as a component that a system with its "
             "own safeguards grounds and checks. Not a medical device; not for diagnosis or treatment decisions.",
             "- **Its outputs are not medical advice.** They can be wrong, incomplete or out of date, and can sound "
             "confident when they are wrong. Anyone with a health problem should consult a qualified professional; "
             "in an emergency, call the local emergency number.",
             "- The safety layer of `medtune serve` / `medtune ask` (emergency advice, refusing dose changes for a named "
             "person, the not-medical-advice notice) runs in front of the model; these weights alone carry none of it.",
             "", "Known failure modes, as measured:", ""]
    measured = []
    for r, note in results:  # the headline figure of each evaluation, as a failure rate where it is one
        if (r.metric_type, r.metric_config) == ("accuracy", None) and r.task_type == "multiple-choice":
            measured.append(f"- {r.dataset_name}: wrong on {100 * (1 - r.metric_value):.1f}% of the questions "
                            f"(accuracy {_show('accuracy', r.metric_value)}" + (f", {note})" if note else ")"))
        elif (r.metric_type, r.metric_config) in (("perplexity", None), ("rouge", "rougeL")):
            key = "perplexity" if r.metric_type == "perplexity" else "rougeL"
            measured.append(f"- {r.dataset_name}: {r.metric_name} {_show(key, r.metric_value)}" + (f" ({note})" if note else ""))
    lines += measured or ["- None: no evaluation was recorded with this model, so its error rate is unknown."]
    samples = (((run[1] if run else {}) .get("eval") or {}).get("samples") or [])[:2]
    if samples:
        lines += ["", "Sample answers on held-out questions (from the run's report):", ""]
        for s in samples:
            lines.append(f"- Q: {_one_line(s.get('question'))} — reference: {_one_line(s.get('reference'))} — "
                         f"model: {_one_line(s.get('prediction'))}")
    lines += ["", "No safety or red-team evaluation of these weights was recorded: how often they give harmful "
              "advice was not measured."]
    return [*lines, ""]


def _one_line(text, limit: int = 200) -> str:
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _recipe_section(a: ModelArtifact, secrets: list[str]) -> list[str]:
    if not a.run:
        return []
    recipe = (a.run / "recipe.yaml").read_text(encoding="utf-8")
    try:
        cleaned = clean_yaml(recipe, secrets)
    except ValueError as err:
        raise PushError(f"{a.run / 'recipe.yaml'}: {err}") from None
    return ["## Recipe", "", "The run's recipe (`medtune train`), with secrets removed and local paths shortened:", "",
            "```yaml", cleaned.rstrip(), "```", ""]


def _files_section(a: ModelArtifact) -> list[str]:
    lines = ["## Files", ""]
    if (a.folder / MODEL_CARD).is_file():
        lines.append("- `medtune.json`: prompt format, generation defaults and lineage, read by medtune")
    lines.append("- `medtune_push.json`: what `medtune push` published")
    if a.is_run:
        lines.append("- `run/`: the training run's recipe, report (report.json, report.md) and loss curve")
    if a.evals:
        lines.append("- `eval/`: the `medtune eval` reports (report.json, report.md, charts, per-item results)")
    if a.quantize:
        lines.append("- `quantize_report.json` / `.md`: size and perplexity against the source")
    if a.merge:
        lines.append("- `merge_report.json`: the merge recipe as run")
    return [*lines, "", "Local paths in these files were shortened to their last component before upload."]
