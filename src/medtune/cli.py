"""`medtune …`: one command line over the Python API. Errors print as one clear message."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medtune import DEFAULT_MODEL
from medtune.logs import setup as setup_logging

RERANKER_HELP = "re-rank the top 20 with this cross-encoder (a train.objective: reranker run, a model folder or hub id)"

def _train(args) -> None:
    from medtune.pipeline import run
    from medtune.recipe import load_recipe

    if args.resume:
        run_dir = Path(args.resume)
        recipe_path = args.recipe or run_dir / "recipe.yaml"
    elif args.recipe:
        run_dir, recipe_path = args.run_dir, args.recipe
    else:
        raise SystemExit("medtune train: give a RECIPE, or --resume RUN_DIR")
    if args.shards < 1 or (args.shards > 1 and not args.dry_run):
        raise SystemExit("medtune train: --shards N (N >= 1) plans memory per GPU with --dry-run; to train sharded, "
                         "launch with accelerate launch --config_file recipes/accelerate/fsdp.yaml")
    recipe = load_recipe(recipe_path, args.set)
    if args.dry_run:
        from medtune.train.plan import plan

        print(json.dumps(plan(recipe, shards=args.shards), indent=2))
        return
    print(run(recipe, run_dir=run_dir, resume=bool(args.resume)))


def _predict(args) -> None:
    from medtune.predict import Predictor

    questions = args.question or [line.strip() for line in sys.stdin if line.strip()]
    gen = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
                            "no_repeat_ngram_size": args.no_repeat_ngram_size,
                            "repetition_penalty": args.repetition_penalty}.items() if v is not None}
    answers = Predictor.from_pretrained(args.run_dir).predict(questions, batch_size=args.batch_size, **gen)
    if args.json:
        print(json.dumps([{"question": q, "answer": a} for q, a in zip(questions, answers)], ensure_ascii=False, indent=2))
    else:
        for a in answers:
            print(a)


def _quickstart(args) -> None:
    from medtune.quickstart import quickstart

    quickstart(args.data_dir, args.set)


def _merge_adapter(args) -> None:
    from medtune.merge.adapter import merge_adapter

    print(merge_adapter(args.run_dir, args.out, force=args.force))


def _merge(args) -> None:
    from medtune.merge.merge import merge_models
    from medtune.recipe import load_merge_recipe

    print(merge_models(load_merge_recipe(args.recipe, args.set), args.out))


def _quantize(args) -> None:
    from medtune.quantize import quantize

    group = {"group_size": args.group_size} if args.group_size else {}
    if args.keep_int8 is not None:
        group["keep_int8"] = tuple(n for n in args.keep_int8.split(",") if n and n != "none")
    out = quantize(args.model, args.method, args.out, calibration=args.calibration, eval_texts=args.eval_data,
                   calibration_samples=args.calibration_samples, eval_samples=args.eval_samples, dtype=args.dtype,
                   gguf_type=args.gguf_type, llama_cpp=args.llama_cpp, **group)
    print((out / "quantize_report.md").read_text())
    print(out)


def _pairs(args) -> None:
    from medtune.align import make_pairs

    report = make_pairs(args.source, args.out, overrides=args.set, loader=args.loader, strategies=args.strategy, seed=args.seed)
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _translate(args) -> None:
    from medtune.data.translate import translate_file

    report = translate_file(args.source, args.out, args.to, model=args.model, kind=args.kind, loader=args.loader,
                            fields=tuple(args.fields.split(",")), batch_size=args.batch_size,
                            generation={"max_new_tokens": args.max_new_tokens}, min_length_ratio=args.min_length_ratio,
                            drop_flagged=args.drop_flagged, on_bad_row=args.on_bad_row, cache_dir=args.cache_dir,
                            limit=args.limit)
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _synth(args) -> None:
    from medtune.data.synth import synthesize

    report = synthesize(args.source, args.out, model=args.model, language=args.lang, per_passage=args.per_passage,
                        loader=args.loader, max_passages=args.max_passages, min_support=args.min_support,
                        generation={"max_new_tokens": args.max_new_tokens}, on_bad_row=args.on_bad_row,
                        cache_dir=args.cache_dir)
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _data_stats(args) -> None:
    from medtune.data import data_stats

    print(json.dumps(data_stats(args.path, loader=args.loader), indent=2, ensure_ascii=False))


def _eval(args) -> None:
    from medtune.eval.suite import evaluate

    out = evaluate(args.model, args.tasks, data_dir=args.data_dir, out_dir=args.out, num_fewshot=args.num_fewshot,
                   limit=args.limit, prompt_language=args.prompt_language, batch_tokens=args.batch_tokens, seed=args.seed,
                   engine=_engine_config(args))
    print((out / "report.md").read_text())
    print(out)


def _compare(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from medtune.eval.suite_report import compare

    rows = compare(args.a, args.b)
    table = Table("task", "metric", "A", "B", "B - A", "beyond chance?", "test")
    for r in rows:
        flag = {True: "yes", False: "no", None: "-"}[r["significant"]]
        table.add_row(r["task"], r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}", f"{r['delta']:+.4f}", flag, r["test"])
    Console().print(table)
    if args.json:
        print(json.dumps(rows, indent=2))


def _index_build(args) -> None:
    from medtune.rag.index import build_index
    from medtune.rag.passages import load_passages

    chunking = {k: v for k, v in {"chunk_words": args.chunk_words, "overlap": args.overlap}.items() if v is not None}
    passages, report = load_passages(args.source, loader=args.loader, on_bad_row=args.on_bad_row, **chunking)
    print(build_index(passages, args.out, embedder=args.embedder, backend=args.backend, report=report, force=args.force))


def _ask(args) -> None:
    from medtune.rag.answer import ask, retrieve

    if args.reranker and not args.index:
        raise SystemExit("medtune ask: --reranker re-ranks what the index finds: give --index DIR too")
    if args.retrieve_only:
        if not args.index:
            raise SystemExit("medtune ask: --retrieve-only needs --index DIR")
        hits = retrieve(args.question, args.index, k=args.k, reranker=args.reranker)
        print(json.dumps(hits, indent=2, ensure_ascii=False))
        return
    ans = ask(args.question, index=args.index, model=args.model, k=args.k, language=args.language,
              max_new_tokens=args.max_new_tokens, engine=_engine_config(args), reranker=args.reranker)
    print(json.dumps(ans.to_dict(), indent=2, ensure_ascii=False) if args.json else ans.text)


def _retrieve(args) -> None:
    from medtune.rag.evaluate import batch_retrieve
    from medtune.rag.index import load_index

    print(batch_retrieve(load_index(args.index), args.queries, args.out, k=args.k, mode=args.mode, reranker=args.reranker))


def _eval_retrieval(args) -> None:
    import time

    from medtune.rag.evaluate import evaluate_retrieval, to_markdown
    from medtune.rag.index import load_index

    index = load_index(args.index)
    out = args.out or Path("evals") / f"retrieval-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.selftest:
        from medtune.data import load_source
        from medtune.rag.evaluate import build_medquad_selftest
        from medtune.recipe import SourceConfig

        records, _ = load_source(SourceConfig(loader="medquad", path=args.selftest))
        paths = build_medquad_selftest(records, out / "selftest", **index.manifest["chunking"])["all"]
        queries, qrels = paths["queries"], paths["qrels"]
    elif args.queries and args.qrels:
        queries, qrels = args.queries, args.qrels
    else:
        raise SystemExit("medtune eval-retrieval: give --queries and --qrels, or --selftest MEDQUAD_DIR")
    report = evaluate_retrieval(index, queries, qrels, out, modes=args.modes.split(","), reranker=args.reranker)
    print(to_markdown(report))
    print(out)


def _push(args) -> None:
    from medtune.push import push

    print(push(args.path, args.repo, private=args.private, revision=args.revision, dry_run=args.dry_run, evals=args.eval))


def _serve(args) -> None:
    from medtune.serve import serve_from_args

    serve_from_args(args.config, model=args.model, index=args.index, host=args.host, port=args.port,
                    api_key=args.api_key, api_key_file=args.api_key_file, engine=_engine_config(args))


def _engine_config(args):
    """--engine, --engine-url and --engine-model as an EngineConfig; None when none is given."""
    if args.engine is None and args.engine_url is None and args.engine_model is None:
        return None
    from pydantic import ValidationError

    from medtune.engines.config import EngineConfig

    kind = args.engine or "openai"
    upstream = {"url": args.engine_url, "upstream_model": args.engine_model}
    try:
        return EngineConfig(kind=kind, **{k: v for k, v in upstream.items() if v})
    except ValidationError as err:
        raise SystemExit(f"medtune {args.command}: --engine {kind}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _engine_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", choices=["transformers", "llama.cpp", "vllm", "openai"],
                   help=f"what generates {what} (default: transformers in this process; llama.cpp: medtune builds and "
                        "runs llama-server over the model's GGUF export; openai: --engine-url)")
    p.add_argument("--engine-url", help="an OpenAI-compatible server's base URL (…/v1) for --engine openai")
    p.add_argument("--engine-model", help="the model name that server serves (default: --model)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtune", description="Build, evaluate and serve medical QA models.")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="warnings and errors only, no progress bars")
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="also the libraries' own logs and progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run a recipe: train, evaluate, write the report; prints the run directory")
    t.add_argument("recipe", nargs="?", help="recipe YAML (optional with --resume)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. train.learning_rate=3e-4")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest checkpoint")
    t.add_argument("--run-dir", type=Path, help="write the run here instead of output_dir/<name>-<time>")
    t.add_argument("--dry-run", action="store_true", help="print the plan (model, data counts, parameters, memory) and stop")
    t.add_argument("--shards", type=int, default=1, metavar="N",
                   help="with --dry-run: also plan the memory per GPU of FSDP over N GPUs (recipes/accelerate/fsdp.yaml)")
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="answer questions with a trained run or a model")
    pr.add_argument("run_dir", help="run directory, model directory or hub id")
    pr.add_argument("question", nargs="*", help="questions (default: one per line on stdin)")
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--max-new-tokens", type=int)
    pr.add_argument("--num-beams", type=int)
    pr.add_argument("--no-repeat-ngram-size", type=int)
    pr.add_argument("--repetition-penalty", type=float)
    pr.add_argument("--json", action="store_true", help="print question/answer pairs as JSON")
    pr.set_defaults(func=_predict)

    q = sub.add_parser("quickstart", help="LoRA-tune SmolLM2-135M on MedQuAD (CPU, minutes) and show before/after")
    q.add_argument("--data-dir", help="folder holding medquad/ (default: $MEDTUNE_DATA_DIR, else download once)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a quickstart recipe field")
    q.set_defaults(func=_quickstart)

    m = sub.add_parser("merge-adapter", help="fold a LoRA run's adapter into a full-precision copy of its base")
    m.add_argument("run_dir")
    m.add_argument("--out", required=True, type=Path, help="directory for the standalone merged model")
    m.add_argument("--force", action="store_true", help="replace --out even if it holds files medtune did not write")
    m.set_defaults(func=_merge_adapter)

    mg = sub.add_parser("merge", help="merge models of one architecture (linear, slerp, task arithmetic, ties, dare); prints the output folder")
    mg.add_argument("recipe", help="merge recipe YAML (see recipes/seed001-ties-merge.yaml)")
    mg.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, e.g. merge.models.0.density=0.3")
    mg.add_argument("--out", type=Path, help="output folder (default: output_dir/<name>-<time>)")
    mg.set_defaults(func=_merge)

    qz = sub.add_parser("quantize", help="quantize a run or model (int8/int4 and bnb4/bnb8 on CPU; gptq on CUDA; gguf for llama.cpp/Ollama); reports size and perplexity")
    qz.add_argument("model", help="run directory, model directory or hub id")
    qz.add_argument("--method", required=True, choices=["int8", "int4", "gptq", "bnb4", "bnb8", "gguf"],
                    help="gguf: a .gguf file and an Ollama Modelfile, written by llama.cpp's converter (see --llama-cpp)")
    qz.add_argument("--out", required=True, type=Path, help="folder for the quantized model and quantize_report.json/.md")
    qz.add_argument("--calibration", help="GPTQ calibration texts: a recipe, run directory or data file (default: a run's train split)")
    qz.add_argument("--eval-data", help="perplexity texts: a recipe, run directory or data file (default: a run's validation split)")
    qz.add_argument("--calibration-samples", type=int, default=128)
    qz.add_argument("--eval-samples", type=int, default=50)
    qz.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="precision of what stays unquantized (embeddings, norms)")
    qz.add_argument("--group-size", type=int, help="int4: weights per quantization group (default 32; GPTQ always uses 128)")
    qz.add_argument("--keep-int8", metavar="NAMES", help="int4: Linear layers (name endings, comma-separated) kept in int8, "
                    "like llama.cpp's Q4_K_M (default v_proj,o_proj,down_proj; 'none': all int4)")
    qz.add_argument("--gguf-type", default="q8_0", help="gguf: f16, bf16 or q8_0; k-quants (q4_k_m, q5_k_m, q6_k, ...) need llama.cpp's llama-quantize")
    qz.add_argument("--llama-cpp", type=Path, metavar="DIR", help="gguf: folder holding llama.cpp's convert_hf_to_gguf.py "
                    "(default $LLAMA_CPP_DIR, else ~/.cache/medtune/llama.cpp, made by scripts/get_llama_cpp.sh)")
    qz.set_defaults(func=_quantize)

    e = sub.add_parser("eval", help="score a run or model on benchmark tasks; writes report.json/.md and charts")
    e.add_argument("model", help="run directory, model directory or hub id")
    e.add_argument("--tasks", required=True, help="comma-separated task names, NAME=PATH to point one at a file "
                   "(choice: headqa_es, headqa_en, medqa, medmcqa, pubmedqa, mmlu_medical, casimedicos_es, casimedicos_en, "
                   "exam_pt=FILE; generation: medquad, medtext=FILE)")
    e.add_argument("--data-dir", help="folder holding the datasets (default: $MEDTUNE_DATA_DIR)")
    e.add_argument("--out", type=Path, help="report directory (default: evals/<model>-<time>)")
    e.add_argument("--num-fewshot", type=int, default=0, help="worked examples before each question (from the dev split)")
    e.add_argument("--limit", type=int, help="only the first N items of each task")
    e.add_argument("--prompt-language", choices=["en", "es", "pt"], help="prompt words in this language (default: the task's)")
    e.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward pass")
    e.add_argument("--seed", type=int, default=0, help="seed of few-shot draws and bootstrap intervals")
    _engine_flags(e, "the generation tasks' answers")
    e.set_defaults(func=_eval)

    c = sub.add_parser("compare", help="side-by-side table of two evaluations, with deltas and their significance")
    c.add_argument("a", help="evaluation directory (or its report.json)")
    c.add_argument("b")
    c.add_argument("--json", action="store_true", help="also print the rows as JSON")
    c.set_defaults(func=_compare)

    pp = sub.add_parser("pairs", help="build DPO preference pairs from a recipe's data or a data file; writes JSONL, prints counts")
    pp.add_argument("source", help="recipe YAML (its data and align.pairs settings) or a data file")
    pp.add_argument("--out", required=True, type=Path, help="JSONL file to write: id, prompt, chosen, rejected, strategy, …")
    pp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    pp.add_argument("--loader", help="data file: loader name (default: inferred from the path)")
    pp.add_argument("--strategy", action="append", choices=["same_focus", "corrupted", "sampled"],
                    help="how rejected answers are made (repeatable; default: the recipe's, else same_focus and corrupted)")
    pp.add_argument("--seed", type=int, help="seed of the pair builders' random choices")
    pp.set_defaults(func=_pairs)

    ix = sub.add_parser("index", help="retrieval indexes over trusted sources")
    ixsub = ix.add_subparsers(dest="index_command", required=True)
    b = ixsub.add_parser("build", help="chunk, embed and index a QA or passage source (BM25 + dense); prints the index directory")
    b.add_argument("source", help="MedQuAD folder, passage JSONL (id, text, title, url, source, lang) or any QA file")
    b.add_argument("--out", required=True, type=Path, help="index directory to write")
    b.add_argument("--force", action="store_true", help="replace --out even if it holds files medtune did not write")
    b.add_argument("--loader", help="loader name for a QA file (default: inferred from the path)")
    b.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2", help="sentence-transformers model: hub id or local dir")
    b.add_argument("--backend", default="onnx-int8", help="embedding backend: onnx-int8 (fast on CPU) or torch")
    b.add_argument("--chunk-words", type=int, help="split longer passages into chunks of this many words (default 250)")
    b.add_argument("--overlap", type=int, help="words shared by consecutive chunks (default 50)")
    b.add_argument("--on-bad-row", choices=["error", "skip"], default="error", help="skip bad rows (counted in the manifest) instead of stopping")
    b.set_defaults(func=_index_build)

    a = sub.add_parser("ask", help="answer a question from an index's sources, citing them [1], [2] with their URLs")
    a.add_argument("question")
    a.add_argument("--index", type=Path, help="index directory (without one the answer is marked as not grounded)")
    a.add_argument("--model", default=DEFAULT_MODEL, help="run directory, model directory or hub id")
    a.add_argument("--k", type=int, default=4, help="passages given to the model")
    a.add_argument("--language", choices=["en", "es", "pt"], help="answer language (default: the question's)")
    a.add_argument("--max-new-tokens", type=int, default=256)
    a.add_argument("--reranker", help=RERANKER_HELP)
    a.add_argument("--retrieve-only", action="store_true", help="print the ranked passages as JSON (id, score, url, text); no model")
    a.add_argument("--json", action="store_true", help="print the answer, sources, support and safety verdict as JSON")
    _engine_flags(a, "the answer")
    a.set_defaults(func=_ask)

    r = sub.add_parser("retrieve", help='batch retrieval: {"id","query"} lines in, {"id","ranked":[passage ids]} lines out')
    r.add_argument("--index", required=True, type=Path)
    r.add_argument("--queries", required=True, type=Path, help="JSONL with id and query")
    r.add_argument("--out", required=True, type=Path, help="JSONL to write")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--mode", default="hybrid", choices=["hybrid", "bm25", "dense"])
    r.add_argument("--reranker", help=RERANKER_HELP)
    r.set_defaults(func=_retrieve)

    er = sub.add_parser("eval-retrieval", help="MRR@10, MAP@10, nDCG@10, recall@k and p50/p95 latency on queries + TREC qrels")
    er.add_argument("--index", required=True, type=Path)
    er.add_argument("--queries", type=Path, help="JSONL with id and query")
    er.add_argument("--qrels", type=Path, help="TREC qrels: qid 0 docid relevance")
    er.add_argument("--selftest", metavar="MEDQUAD_DIR", help="instead: paraphrased MedQuAD questions, judged by their own answers")
    er.add_argument("--modes", default="bm25,dense,hybrid", help="comma-separated: hybrid, bm25, dense")
    er.add_argument("--out", type=Path, help="report directory (default: evals/retrieval-<time>)")
    er.add_argument("--reranker", help=RERANKER_HELP)
    er.set_defaults(func=_eval_retrieval)

    sv = sub.add_parser("serve", help="OpenAI-compatible server (/v1/chat/completions, /v1/models, /v1/retrieve) and web chat page")
    sv.add_argument("config", nargs="?", help="serve config YAML (models, limits, API key)")
    sv.add_argument("--model", help="serve this one model (run directory, model directory or hub id)")
    sv.add_argument("--index", help="ground its answers in this index")
    sv.add_argument("--host", help="address to listen on (default: the config's, else 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default: the config's, else 8000)")
    sv.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $MEDTUNE_API_KEY; "
                                      "other users can read a key given here in the process list: prefer --api-key-file)")
    sv.add_argument("--api-key-file", help="read the key from this file (default: $MEDTUNE_API_KEY_FILE)")
    _engine_flags(sv, "the answers of --model (or of the config's default model)")
    sv.set_defaults(func=_serve)

    tr = sub.add_parser("translate", help="machine-translate an English QA dataset to Spanish or Portuguese (cached, resumable, checked)")
    tr.add_argument("source", help="any QA file or folder medtune loads")
    tr.add_argument("--to", required=True, choices=["es", "pt"])
    tr.add_argument("--out", required=True, type=Path, help="JSONL of records, marked machine_translated, with mt_flags")
    tr.add_argument("--model", default=DEFAULT_MODEL,
                    help="translation model (Marian, NLLB, M2M100) or instruction-tuned LLM: hub id or local dir")
    tr.add_argument("--kind", default="auto", choices=["auto", "seq2seq", "llm"])
    tr.add_argument("--loader", help="loader name (default: inferred from the path)")
    tr.add_argument("--fields", default="question,answer", help="record fields to translate, comma-separated")
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--max-new-tokens", type=int, default=256)
    tr.add_argument("--min-length-ratio", type=float, default=0.5, help="flag translations shorter than this share of the source")
    tr.add_argument("--drop-flagged", action="store_true", help="leave flagged records out (they are counted either way)")
    tr.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    tr.add_argument("--cache-dir", type=Path, help="translation cache (default: ~/.cache/medtune/generations)")
    tr.add_argument("--limit", type=int, help="only the first N answered records (a trial run)")
    tr.set_defaults(func=_translate)

    sy = sub.add_parser("synth", help="generate question-answer pairs from medical passages with an LLM (deduplicated, support-filtered)")
    sy.add_argument("source", help="passage JSONL (text or raw_text), e.g. ../shared/data/es_clinical_text/cares_es.jsonl, or a QA file")
    sy.add_argument("--out", required=True, type=Path, help="JSONL of records; OUT.provenance.json is written beside it")
    sy.add_argument("--model", default=DEFAULT_MODEL, help="instruction-tuned LLM: hub id or local dir")
    sy.add_argument("--lang", choices=["en", "es", "pt"], help="language of the passages and pairs (default: the source's)")
    sy.add_argument("--per-passage", type=int, default=1)
    sy.add_argument("--max-passages", type=int)
    sy.add_argument("--min-support", type=float, default=0.7, help="share of the answer's content words found in the passage")
    sy.add_argument("--loader", help="passages, or a QA loader name (default: inferred)")
    sy.add_argument("--max-new-tokens", type=int, default=256)
    sy.add_argument("--on-bad-row", choices=["error", "skip"], default="error")
    sy.add_argument("--cache-dir", type=Path, help="generation cache (default: ~/.cache/medtune/generations)")
    sy.set_defaults(func=_synth)

    pu = sub.add_parser("push", help="publish a run, merge, quantized folder, evaluation or translated/synthetic dataset "
                        "to the Hugging Face Hub with a generated card; prints the repository URL")
    pu.add_argument("path", help="what medtune wrote: a run directory, a model folder (merge-adapter, merge, quantize), "
                    "an eval folder, a translate/synth JSONL file, or a folder written by --dry-run")
    pu.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the repository to create or update (model, or "
                    "dataset for a JSONL file); the token comes from HF_TOKEN or `hf auth login`")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--revision", metavar="BRANCH", help="push to this branch (created when missing) instead of main")
    pu.add_argument("--eval", action="append", default=[], metavar="EVAL_DIR",
                    help="also publish this `medtune eval` folder of the model under eval/, its results in the card (repeatable)")
    pu.add_argument("--dry-run", type=Path, metavar="DIR",
                    help="write exactly what would be uploaded (files and README.md card) into DIR instead; no network")
    pu.set_defaults(func=_push)

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    st = dsub.add_parser("stats", help="counts per collection, question type and split, as JSON")
    st.add_argument("path")
    st.add_argument("--loader", help="loader name (default: inferred from the path)")
    st.set_defaults(func=_data_stats)
    return p


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors in what the user gave (recipe, data, model reference, index…): one clear line, no traceback.
    Imported only when something failed, so that `medtune --help` does not load torch."""
    from medtune.data.report import DataError
    from medtune.io import OutputInUse
    from medtune.eval.tasks import TaskError
    from medtune.merge.merge import MergeError
    from medtune.models import ModelNotAvailable
    from medtune.quantize import QuantizeError
    from medtune.rag.index import IndexMismatch
    from medtune.recipe import RecipeError
    from medtune.engines.managed import EngineSetupError
    from medtune.push import PushError

    return (RecipeError, DataError, ModelNotAvailable, TaskError, IndexMismatch, MergeError, QuantizeError, OutputInUse,
            EngineSetupError, PushError)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    try:
        args.func(args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"medtune {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
