"""`medtune push`: cards and dry-run folders from real tiny artifacts (a LoRA run on MedQuAD files, its
evaluation, its merged and int4 copies, a linear merge, translated and synthetic datasets); refusals; the
Hub calls (HfApi's methods are the only thing faked)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from huggingface_hub import HfApi, ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from medtune.cli import main
from medtune.push import PushError, plan, push
from medtune.push.clean import clean_text, clean_value
from medtune.push.licenses import HUB_LICENSES, by_name, of_record, of_source
from test_quantize import needs_llama_cpp, spm_llama  # noqa: F401  (a fixture: a tiny Llama llama.cpp converts)

TOKEN = "hf_fakeTokenForMedtunePushTests0123456789ab"
GHR = SHARED_DATA / "medquad" / "3_GHR_QA"
needs_data = pytest.mark.skipif(not GHR.is_dir(), reason="needs ../shared/data (MedQuAD, HEAD-QA)")
pytestmark = needs_data


@pytest.fixture(scope="module", autouse=True)
def token_in_env():
    """A token where huggingface_hub looks first: it must appear in nothing that push writes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_llama) -> dict[str, Path]:
    """Every artifact kind, made by medtune's own code on tiny models and real MedQuAD / HEAD-QA files."""
    from medtune.eval.suite import evaluate
    from medtune.merge.adapter import merge_adapter
    from medtune.merge.merge import merge_models
    from medtune.pipeline import run
    from medtune.quantize import quantize
    from medtune.recipe import MergeConfig, recipe_from_dict
    root = tmp_path_factory.mktemp("push")
    medquad = root / "medquad"
    medquad.mkdir()
    for f in sorted(GHR.glob("*.xml"))[:5]:  # 30 real MedQuAD pairs, 5 foci
        shutil.copy(f, medquad / f.name)
    recipe = {
        "name": "tiny-medquad", "model": str(tiny_llama),
        "data": {"sources": [{"loader": "medquad", "path": str(medquad)}], "split": {"validation": 0.2, "test": 0.2, "seed": 0}},
        "prompt": {"template": "{question}", "system": "You answer medical questions."},
        "train": {"method": "lora", "max_steps": 4, "learning_rate": 5e-3, "batch_size": 4, "eval_batch_size": 4,
                  "logging_steps": 1, "save_steps": 100, "max_length": 64, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "eval": {"metrics": ["perplexity", "rouge"], "max_samples": 4, "batch_size": 4, "generation": {"max_new_tokens": 4}},
        # A token pasted where it does not belong: the published recipe must not carry it.
        "tracking": {"backend": "none", "project": TOKEN},
        "output_dir": str(root / "runs"),
    }
    out = {"run": run(recipe_from_dict(recipe), run_dir=root / "run")}
    out["eval"] = evaluate(out["run"], "headqa_en", data_dir=SHARED_DATA, out_dir=root / "eval", limit=10)
    out["merged"] = merge_adapter(out["run"], root / "merged")
    out["int4"] = quantize(out["run"], "int4", root / "int4", eval_texts=["Gout is a form of arthritis."] * 4)
    other = _same_vocab_llama(tiny_llama, root)
    out["merge"] = merge_models(MergeConfig(method="linear", models=[{"model": str(tiny_llama)}, {"model": str(other)}]),
                                root / "linear")
    out["translated"] = _translated(root, tiny_llama)
    out["synthetic"] = _synthetic(root)
    return out


def _same_vocab_llama(tiny_llama: Path, root: Path) -> Path:
    """tiny_llama with other random weights and the same tokenizer (what a merge needs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(1)
    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_llama).config)
    model.save_pretrained(root / "tiny-llama-b")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(root / "tiny-llama-b")
    return root / "tiny-llama-b"


def _translated(root: Path, model: Path) -> Path:
    from medtune.data.translate import translate_file

    translate_file(sorted(GHR.glob("*.xml"))[5], root / "ghr-es.jsonl", "es", model=str(model), limit=3,
                   cache_dir=root / "cache", generation={"max_new_tokens": 4}, progress=False)
    return root / "ghr-es.jsonl"


def _synthetic(root: Path) -> Path:
    """`medtune synth` over real CARES reports; the generator (synth's `generate` hook) answers each passage
    with its own first sentence, which is what a good model would and the tiny one cannot."""
    from medtune.data.synth import synthesize

    def first_sentence(prompts: list[str]) -> list[str]:
        return [f"Pregunta: ¿Qué dice el informe?\nRespuesta: {p.rsplit(chr(10), 1)[-1].split('. ')[0]}." for p in prompts]

    synthesize(SHARED_DATA / "es_clinical_text" / "cares_es.jsonl", root / "cares-qa.jsonl", language="es", max_passages=3,
               cache_dir=root / "cache", generate=first_sentence, model="canned-first-sentence", progress=False)
    return root / "cares-qa.jsonl"


@pytest.fixture(scope="module")
def dry(made, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dry")
    repos = {"run": "ana/tiny-medquad-lora", "eval": "ana/tiny-medquad-lora", "merged": "ana/tiny-merged",
             "int4": "ana/tiny-int4", "merge": "ana/tiny-linear", "translated": "ana/ghr-es", "synthetic": "ana/cares-qa-es"}
    return {kind: Path(push(made[kind], repo, dry_run=root / kind)) for kind, repo in repos.items()}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hash(folder: Path) -> str:
    return hashlib.sha256(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in _tree(folder).items()}).encode()).hexdigest()


def test_adapter_run_card(made, dry):
    folder = dry["run"]
    card = ModelCard.load(folder / "README.md")  # parses as the Hub's client parses it
    meta = metadata_load(folder / "README.md")
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "unknown" and "base_model" not in meta  # a local base: no Hub id, no license to read
    assert "**not a Hub model**: the local folder `tiny-llama`" in card.text and "License of these weights: **unknown**" in card.text
    assert meta["datasets"] == ["lavita/MedQuAD"] and meta["language"] == ["en"]
    assert {"medtune", "medical", "lora"} <= set(meta["tags"])
    assert "| `medquad` (medquad) | MedQuAD |" in card.text and "`cc-by-4.0`" in card.text
    report = json.loads((made["run"] / "report.json").read_text())
    _, results = model_index_to_eval_results(meta["model-index"])
    held_out = {(r.metric_type, r.metric_config): r.metric_value for r in results}
    metrics = report["eval"]["metrics"]
    assert held_out[("perplexity", None)] == metrics["perplexity"] and held_out[("rouge", "rougeL")] == metrics["rougeL"]
    losses = [e["loss"] for e in report["train"]["log_history"] if "loss" in e]
    assert f"- steps: {report['train']['global_step']}" in card.text and f"- final logged loss: {losses[-1]:.4f}" in card.text
    assert f"- training tokens: {report['train']['train_tokens']:,}" in card.text
    assert "![loss curve](run/loss_curve.png)" in card.text
    assert (folder / "run" / "loss_curve.png").read_bytes() == (made["run"] / "loss_curve.png").read_bytes()
    assert {"adapter_model.safetensors", "adapter_config.json", "medtune.json", "run/recipe.yaml", "run/report.json",
            "README.md", "medtune_push.json"} <= set(_tree(folder))
    assert not {"training_args.bin", "predictions.jsonl"} & {p.name for p in folder.rglob("*")}
    assert "not medical advice" in card.text and "No safety or red-team evaluation" in card.text
    assert "project: <removed>" in card.text and "path: medquad" in card.text  # the recipe, cleaned
    # The run's adapter/ named directly is the same push.
    assert plan(made["run"] / "adapter", "ana/tiny-medquad-lora").card == (folder / "README.md").read_text()


def test_hub_base_gets_base_model_and_its_license(made, tmp_path):
    """The same run, as if trained from the hub's SmolLM2: base_model links it and its license is known."""
    copy = shutil.copytree(made["run"], tmp_path / "run")
    card_file = copy / "adapter" / "medtune.json"
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    meta = metadata_load(Path(push(copy, "ana/smol-lora", dry_run=tmp_path / "dry")) / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_model_relation"] == "adapter"
    assert meta["license"] == "apache-2.0"


def test_evaluation_results_are_model_index_entries(made, dry):
    folder = dry["eval"]
    meta = metadata_load(folder / "README.md")
    report = json.loads((made["eval"] / "report.json").read_text())
    m = report["tasks"]["headqa_en"]["metrics"]
    _, results = model_index_to_eval_results(meta["model-index"])
    headqa = {(r.metric_type, r.metric_config): r for r in results if r.dataset_type == "dvilares/head_qa"}
    assert {k: r.metric_value for k, r in headqa.items()} == {
        ("accuracy", None): m["accuracy"]["value"], ("accuracy", "length-normalised"): m["accuracy_norm"]["value"],
        ("f1", "macro"): m["macro_f1"]["value"]}
    r = headqa[("accuracy", None)]
    assert (r.task_type, r.dataset_config, r.dataset_split) == ("multiple-choice", "en", "test")
    assert "first 10 items" in r.dataset_name
    low, high = m["accuracy"]["ci95"]
    assert f"95% bootstrap interval {100 * low:.1f}% – {100 * high:.1f}%" in (folder / "README.md").read_text()
    assert set(_tree(made["eval"])) == {k.removeprefix("eval/eval/") for k in _tree(folder) if k.startswith("eval/eval/")}
    assert {k for k in _tree(folder) if not k.startswith("eval/")} == set(_tree(dry["run"]))  # the model with it
    # --eval attaches the same folder to the model given as PATH; another model's evaluation is refused.
    assert plan(made["run"], "ana/tiny-medquad-lora", [made["eval"]]).card == plan(made["eval"], "ana/tiny-medquad-lora").card
    with pytest.raises(PushError, match="it evaluated .* not .*merged"):
        plan(made["merged"], "ana/x", [made["eval"]])


def test_merged_quantized_and_merge_cards(made, dry):
    merged = metadata_load(dry["merged"] / "README.md")
    assert merged["library_name"] == "transformers" and "base_model" not in merged
    assert "folded into a full-precision (fp32) copy of its base" in (dry["merged"] / "README.md").read_text()
    # Special tokens are not secrets, and a file with nothing to clean keeps its bytes.
    for name in ("config.json", "tokenizer_config.json", "generation_config.json", "tokenizer.json"):
        assert (dry["merged"] / name).read_bytes() == (made["merged"] / name).read_bytes(), name

    q_card = (dry["int4"] / "README.md").read_text()
    q = metadata_load(dry["int4"] / "README.md")
    assert {"quantized", "int4"} <= set(q["tags"]) and "library_name" not in q and "model-index" not in q
    report = json.loads((made["int4"] / "quantize_report.json").read_text())
    c = report["comparison"]
    assert f"({c['size_ratio']:.2f}× smaller)" in q_card and f"({c['perplexity_change_pct']:+.2f}%)" in q_card
    assert {"quanto_model.safetensors", "quanto_qmap.json", "quantize_report.json", "quantize_report.md"} <= set(_tree(dry["int4"]))
    # The int4 folder was made from the run: its card carries the run's data and their licenses.
    assert q["datasets"] == ["lavita/MedQuAD"]

    linear = metadata_load(dry["merge"] / "README.md")
    assert {"merge", "linear"} <= set(linear["tags"]) and linear["license"] == "unknown"
    merge_card = (dry["merge"] / "README.md").read_text()
    assert "- model `tiny-llama`: weight 1.0" in merge_card and "- model `tiny-llama-b`: weight 1.0" in merge_card
    assert json.loads((dry["merge"] / "merge_report.json").read_text())["models"][0]["path"] == "tiny-llama"


@needs_llama_cpp
def test_gguf_folder_with_its_modelfile(spm_llama, tmp_path):  # noqa: F811
    from medtune.quantize import quantize

    gguf = quantize(spm_llama, "gguf", tmp_path / "gguf", gguf_type="q8_0", eval_texts=["Gout is a form of arthritis."] * 4)
    folder = Path(push(gguf, "ana/tiny-gguf", dry_run=tmp_path / "dry"))
    assert (folder / "model-Q8_0.gguf").read_bytes() == (gguf / "model-Q8_0.gguf").read_bytes()
    assert (folder / "Modelfile").read_text() == (gguf / "Modelfile").read_text() == \
        'FROM ./model-Q8_0.gguf\nSYSTEM """You answer medical questions."""\n'
    meta, card = metadata_load(folder / "README.md"), (folder / "README.md").read_text()
    assert {"quantized", "gguf"} <= set(meta["tags"]) and "library_name" not in meta
    assert "ollama create tiny-gguf -f ./models/tiny-gguf/Modelfile" in card and "- outtype: q8_0" in card
    ratio = json.loads((gguf / "quantize_report.json").read_text())["comparison"]["size_ratio"]
    assert f"({ratio:.2f}× smaller)" in card


def test_nothing_local_or_secret_is_published(made, dry, tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    local = [TOKEN.encode(), base.encode(), b"/tmp/", str(Path.home()).encode() + b"/", b"/work/", str(Path.cwd()).encode()]
    for kind, folder in dry.items():
        for name, data in _tree(folder).items():
            found = [p for p in local if p in data]
            assert not found, f"{kind}: {name} holds {found}"
    # the sources are as they were: cleaning wrote copies
    assert TOKEN in (made["run"] / "recipe.yaml").read_text() and str(made["run"].parent) in (made["run"] / "recipe.yaml").read_text()
    assert "<removed>" in (dry["run"] / "run" / "recipe.yaml").read_text()


def test_dataset_cards(made, dry):
    es = dry["translated"]
    meta = metadata_load(es / "README.md")
    assert meta["license"] == "cc-by-4.0" and meta["source_datasets"] == ["lavita/MedQuAD"] and meta["language"] == ["es"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/ghr-es.jsonl"}]
    assert {"machine-translated", "medtune"} <= set(meta["tags"])
    source = [json.loads(line) for line in made["translated"].read_text().splitlines()]
    published = [json.loads(line) for line in (es / "data" / "ghr-es.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in published] == [r["answer"] for r in source] and len(published) == 3
    assert {r["mt_model"] for r in published} == {"tiny-llama"}  # the local model path, shortened
    flagged = sum(bool(r["mt_flags"]) for r in source)
    assert f"{flagged:,} of 3 rows flagged" in (es / "README.md").read_text()

    syn = dry["synthetic"]
    text = (syn / "README.md").read_text()
    meta = metadata_load(syn / "README.md")
    prov = json.loads((made["synthetic"].with_name("cares-qa.provenance.json")).read_text())
    assert meta["license"] == "cc-by-4.0" and "synthetic" in meta["tags"]
    assert "| CARES (radiology reports) |" in text and f"sha256 `{prov['source']['sha256']}`" in text
    assert f"| records | {prov['counts']['records']:,} |" in text and "`cares_es.jsonl`" in text
    assert json.loads((syn / "cares-qa.provenance.json").read_text())["source"]["path"] == "cares_es.jsonl"


def test_unknown_sources_say_so(made, qa_jsonl, tmp_path):
    """A translated file whose records name no known dataset: license unknown, and the card says so."""
    rows = [json.loads(line) | {"machine_translated": True, "mt_model": "m", "mt_flags": [], "language": "es"}
            for line in qa_jsonl.read_text().splitlines()]
    data = tmp_path / "es.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    upload = plan(data, "ana/unknown-es")
    assert "\nlicense: unknown\n" in upload.card and "could not be determined" in upload.card


def test_refuses_data_that_may_not_be_redistributed(tmp_path, capsys):
    """MedQuAD withheld its MedlinePlus answers for copyright; a set that carries such answers is refused."""
    rows = [{"question": "What is abdominal CT?", "answer": "An abdominal CT scan is an imaging method.", "source": "ADAM",
             "language": "es", "machine_translated": True, "mt_model": "m", "mt_flags": []},
            {"question": "What is gout?", "answer": "Gout is arthritis.", "source": "GHR", "language": "es",
             "machine_translated": True, "mt_model": "m", "mt_flags": []}]
    data = tmp_path / "adam-es.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(data), "--repo", "ana/adam-es", "--dry-run", str(tmp_path / "dry")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "refusing to publish" in err and "1 rows from MedQuAD answers from MedlinePlus" in err and "may not be redistributed" in err
    assert not (tmp_path / "dry").exists()
    # A synthetic set whose every generation was malformed holds nothing to publish.
    from medtune.data.synth import synthesize

    synthesize(SHARED_DATA / "es_clinical_text" / "cares_es.jsonl", tmp_path / "none.jsonl", language="es", max_passages=1,
               generate=lambda prompts: ["no pairs here"] * len(prompts), model="canned-malformed", cache_dir=tmp_path / "c",
               progress=False)
    with pytest.raises(PushError, match="holds no records; nothing to publish .*'malformed': 1"):
        plan(tmp_path / "none.jsonl", "ana/none")
    # The same collection's question without its answer is MedQuAD's own (CC BY 4.0).
    assert of_record("ADAM", None).license == "cc-by-4.0" and of_record("ADAM", "text").redistributable is False


def test_offline_push_fails_fast_naming_dry_run(made, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("offline push reached the Hub client"))
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(made["run"]), "--repo", "ana/tiny"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--dry-run DIR" in err and "Traceback" not in err


@pytest.fixture
def hub_online(monkeypatch):
    """The Hub's host reachable (a listener on 127.0.0.1:443, which medtune's reachability check connects to);
    nothing answers there, since every HfApi call is faked."""
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 443))
    except OSError as err:
        pytest.skip(f"cannot listen on port 443 here: {err}")
    listener.listen()
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")
    yield
    listener.close()


def _fake_hub(monkeypatch, *, existing_private: bool = True) -> list:
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, **kw):
        calls.append(("repo_info", repo_id, kw))
        return type("Info", (), {"private": existing_private})()

    def create_branch(self, repo_id, **kw):
        calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw | {"tree": _tree(Path(kw["folder_path"]))}))

    for name, fn in [("create_repo", create_repo), ("repo_info", repo_info), ("create_branch", create_branch),
                     ("upload_folder", upload_folder)]:
        monkeypatch.setattr(HfApi, name, fn)
    return calls


def test_push_uploads_what_the_dry_run_shows(made, dry, hub_online, monkeypatch):
    calls = _fake_hub(monkeypatch)
    before = _hash(made["eval"].parent / "run")
    url = push(made["eval"], "ana/tiny-medquad-lora", private=True, revision="medtune-test")
    assert url == "https://huggingface.co/ana/tiny-medquad-lora"
    assert [c[0] for c in calls] == ["create_repo", "repo_info", "create_branch", "upload_folder"]
    assert calls[0][2] | {} == {"repo_type": "model", "private": True, "exist_ok": True}
    assert calls[2][2] == {"branch": "medtune-test", "repo_type": "model", "exist_ok": True}
    upload = calls[3][2]
    assert (upload["repo_type"], upload["revision"]) == ("model", "medtune-test")
    assert upload["tree"] == _tree(dry["eval"])  # byte for byte what the dry run wrote
    assert _hash(made["run"]) == before and not list(made["run"].parent.glob(".push-*"))  # source untouched, staging gone

    calls.clear()
    push(made["translated"], "ana/ghr-es")
    assert calls[0][2]["repo_type"] == "dataset" and calls[0][2]["private"] is False and calls[-1][2]["revision"] is None
    assert calls[-1][2]["tree"] == _tree(dry["translated"])

    calls.clear()
    push(dry["synthetic"], "ana/cares-qa-es")  # a dry-run folder goes up as it is
    assert calls[-1][2]["tree"] == _tree(dry["synthetic"]) and calls[-1][2]["repo_type"] == "dataset"
    assert calls[-1][2]["commit_message"] == "medtune push: synthetic cares-qa.jsonl"


def test_a_dry_run_folder_publishes_only_what_its_manifest_lists(made, dry, hub_online, monkeypatch, tmp_path):
    """Files added to a dry-run folder afterwards (hidden ones too) are refused, and a listed file edited to
    hold a secret is caught by the same cleaning as any push; nothing reaches the Hub."""
    calls = _fake_hub(monkeypatch)
    folder = shutil.copytree(dry["merged"], tmp_path / "merged")
    (folder / ".env").write_text("OPENAI_API_KEY=sk-proj-abcdefghijklmnop\n")
    (folder / "extra.json").write_text('{"api_key": "sk-proj-abcdefghijklmnop"}')
    with pytest.raises(PushError, match=r"does not list: \.env, extra\.json"):
        push(folder, "ana/tiny-merged")
    (folder / ".env").unlink()
    (folder / "extra.json").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(PushError, match="missing files .*: config.json"):
        push(folder, "ana/tiny-merged")
    shutil.copy(dry["merged"] / "config.json", folder / "config.json")
    (folder / "medtune.json").write_text('{"api_key": "sk-proj-abcdefghijklmnop"}')
    with pytest.raises(PushError, match="changed since .*cleaning would rewrite medtune.json"):
        push(folder, "ana/tiny-merged")
    assert not calls and not list(tmp_path.glob(".push-*"))
    # Previewed again with --dry-run: the same folder.
    again = push(dry["merged"], "ana/tiny-merged", dry_run=tmp_path / "again")
    assert _tree(Path(again)) == _tree(dry["merged"])


def test_private_push_to_an_existing_public_repo_is_refused(made, hub_online, monkeypatch):
    calls = _fake_hub(monkeypatch, existing_private=False)
    with pytest.raises(PushError, match="already exists and is public"):
        push(made["merged"], "ana/tiny-merged", private=True)
    assert "upload_folder" not in [c[0] for c in calls]


def test_hub_refusals_are_one_line(made, hub_online, monkeypatch, capsys):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self, repo_id, **kw):
        response = httpx2.Response(403, request=httpx2.Request("POST", "https://127.0.0.1/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden: you have no write access to ana", response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(made["merged"]), "--repo", "ana/tiny-merged"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--repo ana/tiny-merged: the Hub did not take the upload: 403 Forbidden" in err
    assert "Traceback" not in err and TOKEN not in err
    assert not list(made["merged"].parent.glob(".push-*"))


def test_bad_input_is_named(made, dry, tiny_llama, tmp_path, capsys):
    for argv, expected in [
        ([str(made["run"]), "--repo", "tiny"], "--repo 'tiny': not a repository id OWNER/NAME"),
        ([str(made["run"]), "--repo", "ana/two words"], "not a repository id OWNER/NAME"),
        ([str(tiny_llama), "--repo", "ana/x"], f"{tiny_llama}: not something medtune wrote"),
        ([str(tmp_path / "nothing"), "--repo", "ana/x"], "no such file or folder"),
        ([str(dry["run"]), "--repo", "ana/other"], "written for 'ana/tiny-medquad-lora'"),
        ([str(made["eval"]), "--repo", "ana/x", "--eval", str(made["eval"])], "an evaluation folder; give the model"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["push", *argv, "--dry-run", str(tmp_path / "dry")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and "Traceback" not in err, err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(PushError, match="did not write"):
        push(made["merged"], "ana/tiny-merged", dry_run=theirs)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(PushError, match="inside"):
        push(made["merged"], "ana/tiny-merged", dry_run=made["merged"] / "dry")
    with pytest.raises(PushError, match=f"inside {made['eval']}"):  # any folder published, an --eval's too
        push(made["run"], "ana/tiny-medquad-lora", evals=[made["eval"]], dry_run=made["eval"] / "dry")
    assert not (made["eval"] / "dry").exists()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(PushError, match="a symbolic link"):
        push(made["merged"], "ana/tiny-merged", dry_run=tmp_path / "link")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [] and (tmp_path / "link").is_symlink()
    again = push(made["merged"], "ana/tiny-merged", dry_run=dry["merged"])  # its own dry run is replaced
    assert _tree(Path(again)) == _tree(dry["merged"])


def test_cleaning_keeps_text_and_removes_what_is_local():
    assert clean_text("see /home/ana/runs/x/adapter and ~/.cache/medtune/gguf/m.gguf", []) == "see adapter and m.gguf"
    kept = "dose 5 mg/kg/day, https://medlineplus.gov/druginfo/meds/a1.html, 28/01/2019, and/or POST /v1/chat"
    assert clean_text(kept, []) == kept
    # Paths under folders this machine lacks, with doubled slashes, as file:// URLs, on Windows (raw and as JSON
    # escapes them): all local.
    assert clean_text("file:///home/ana/x/y.json, //home/ana/z, /fsx/ana/runs/a, /exports/b/c, C:\\Users\\ana\\m, "
                      '"C:\\\\Users\\\\ana\\\\n", D:/data/o', []) == 'y.json, z, a, c, m, "n", o'
    assert clean_text("https://host/a/b and s3://bucket/k/v", []) == "https://host/a/b and s3://bucket/k/v"
    assert clean_text(f"token {TOKEN} or hf_{'x' * 30}", []) == "token <removed> or <removed>"
    assert clean_text("key=s3cr3t-value-123", ["s3cr3t-value-123"]) == "key=<removed>"
    assert clean_value({"eos_token": "</s>", "pad_token_id": 0}, [], by_key=False) == {"eos_token": "</s>", "pad_token_id": 0}
    # Outside the libraries' files too, names that merely contain token / key / auth are kept.
    named = {"pad_token": "<pad>", "eos_token": "</s>", "answer_key": "B", "auth_method": "oauth", "Key": "focus"}
    assert clean_value(named, []) == named
    assert clean_value({"NGROK_AUTHTOKEN": "a", "GITHUB_PAT": "b", "aws_secret_access_key": "c", "private_key": "d",
                        "token": "e"}, []) == dict.fromkeys(["NGROK_AUTHTOKEN", "GITHUB_PAT", "aws_secret_access_key",
                                                            "private_key", "token"], "<removed>")
    assert clean_value({"hub_token": "abc", "api_key": "k", "wandbApiKey": "k", "max_tokens": 5, "train_tokens": 9,
                        "path": "/tmp/a/b.json"}, []) == {"hub_token": "<removed>", "api_key": "<removed>",
                                                           "wandbApiKey": "<removed>", "max_tokens": 5, "train_tokens": 9, "path": "b.json"}


def test_the_final_scan_reads_binaries(tmp_path):
    """A secret or local path in a weights header or a torch pickle refuses the upload, as one in text does."""
    import torch
    from safetensors.torch import save_file

    from medtune.push.clean import leaks

    run = tmp_path / "runs" / "x"
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors", metadata={"source": str(run / "model")})
    torch.save({"hub_token": TOKEN}, tmp_path / "training_args.bin")
    (tmp_path / "notes.md").write_text("trained in /home/ana/runs/x\n")
    (tmp_path / "where.txt").write_text("copied from file:///fsx/ana/x\r\nand C:\\Users\\ana\\m\n")
    (tmp_path / "clean.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes().replace(str(run).encode(), b"x" * len(str(run))))
    found = leaks(tmp_path, [TOKEN], [tmp_path / "runs"])
    assert found == [f"model.safetensors: holds the local path {str(tmp_path / 'runs')!r}",
                     "notes.md: line 1 holds the local path '/home/ana/runs/x'",
                     "training_args.bin: holds a token or secret",
                     "where.txt: line 1 holds the local path 'file:///fsx/ana/x'",
                     "where.txt: line 2 holds the local path 'C:\\\\Users\\\\ana\\\\m'"]


def test_license_table():
    assert all(d.license in HUB_LICENSES for d in [by_name("medquad"), by_name("head_qa"), by_name("chatdoctor")])
    assert of_source("medquad", "../shared/data/medquad").license == "cc-by-4.0"
    assert of_source("chatdoctor", "data/chatdoctor/chatdoctor5k.json").license == "apache-2.0"
    assert of_source("chatdoctor", "data/HealthCareMagic-100k.json").license == "unknown"
    assert of_source("text", "../shared/data/es_clinical_text/meddocan_es.jsonl").name.startswith("MEDDOCAN")
    assert of_source("jsonl", "mine.jsonl").license == "unknown"


def test_symbolic_links_out_of_the_artifact_are_refused(made, tmp_path):
    folder = shutil.copytree(made["merged"], tmp_path / "merged")
    outside = tmp_path / "home" / "id_rsa"
    outside.parent.mkdir()
    outside.write_text("PRIVATE KEY")
    (folder / "notes.txt").symlink_to(outside)
    with pytest.raises(PushError, match=r"symbolic links out of it.*notes.txt -> .*id_rsa"):
        plan(folder, "ana/tiny-merged")
    (folder / "notes.txt").unlink()
    (folder / "config-copy.json").symlink_to(folder / "config.json")  # a link inside the folder is its own file
    assert "config-copy.json" in plan(folder, "ana/tiny-merged").files


@pytest.mark.parametrize("source", ["ADAM", "10_MPlus_ADAM_QA"])
def test_a_synthetic_row_from_medlineplus_is_refused(made, tmp_path, source):
    """The provenance names a redistributable file, but a row's own `source` (a record name, or MedQuAD's
    collection folder) says its passage is A.D.A.M.'s: the set is refused."""
    data = tmp_path / "cares-qa.jsonl"
    rows = [json.loads(line) for line in made["synthetic"].read_text().splitlines()]
    rows[0]["source"] = source
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(made["synthetic"].with_name("cares-qa.provenance.json"), tmp_path)
    with pytest.raises(PushError, match="refusing to publish.*1 rows from MedQuAD answers from MedlinePlus"):
        plan(data, "ana/cares-qa-es")
    assert of_record("12_MPlusHerbsSupplements_QA", "text").redistributable is False


def test_unreadable_files_are_one_line_naming_them(made, tmp_path, monkeypatch, capsys):
    folder = shutil.copytree(made["merged"], tmp_path / "merged")
    rows = [json.loads(line) for line in made["translated"].read_text().splitlines()]
    flagged = tmp_path / "flags.jsonl"
    flagged.write_text("".join(json.dumps(r | {"mt_flags": 5}) + "\n" for r in rows))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(made["translated"].read_bytes() + '{"question": "¿Qué?"}\n'.encode("latin-1"))
    cases = [("notes.txt", "café".encode("latin-1"), "notes.txt: cannot be checked"),
             ("extra.json", b'{"a": ', "extra.json: cannot be checked"),
             ("extra.yaml", b"a: [1, 2\n", "extra.yaml: cannot be checked")]
    for name, data, expected in cases:
        (folder / name).write_bytes(data)
        with pytest.raises(SystemExit) as exit_:
            main(["push", str(folder), "--repo", "ana/x", "--dry-run", str(tmp_path / "dry")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and "Traceback" not in err, err
        (folder / name).unlink()
    for data, expected in [(flagged, "flags.jsonl: record 1: mt_flags is 5"), (latin1, "latin1.jsonl: unreadable as UTF-8")]:
        with pytest.raises(SystemExit) as exit_:
            main(["push", str(data), "--repo", "ana/x", "--dry-run", str(tmp_path / "dry")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and "Traceback" not in err, err
    # Offline, a push stops before reading anything: not even PATH is looked at.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("medtune.push.plan", lambda *a, **k: pytest.fail("offline push read its artifact"))
    with pytest.raises(PushError, match="cannot be reached"):
        push(tmp_path / "nothing", "ana/x")


def test_evaluations_named_alike_are_refused_and_dot_is_resolved(made, tmp_path, monkeypatch):
    other = shutil.copytree(made["eval"], tmp_path / "b" / made["eval"].name)
    with pytest.raises(PushError, match=f"both would be published as eval/{made['eval'].name}/"):
        plan(made["run"], "ana/tiny-medquad-lora", [made["eval"], other])
    twice = plan(made["run"], "ana/tiny-medquad-lora", [made["eval"], made["eval"]])
    monkeypatch.chdir(made["eval"])
    here = plan(made["run"], "ana/tiny-medquad-lora", ["."])
    assert set(here.files) == set(twice.files) and f"eval/{made['eval'].name}/report.json" in here.files


def test_push_dot_names_the_folder(made, tmp_path, monkeypatch):
    monkeypatch.chdir(made["merged"])
    upload = plan(".", "ana/tiny-merged")
    assert upload.message == "medtune push: merged-adapter merged"
    folder = Path(push(".", "ana/tiny-merged", dry_run=tmp_path / "dry"))
    assert json.loads((folder / "medtune_push.json").read_text())["source"] == "merged"


def test_files_with_nothing_to_clean_keep_their_bytes(tmp_path):
    from medtune.push.clean import clean_file, clean_records

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    files = {"rows.jsonl": b'{"a": 1}\r\n\n{"b": "x"}', "notes.md": b"line one\r\nline two\r\n",
             "r.yaml": b"a: 1\r\nb: [x]\r\n"}
    for name, data in files.items():
        (src / name).write_bytes(data)
        clean_file(src / name, dst / name, [])
        assert (dst / name).read_bytes() == data, name
    clean_records(src / "rows.jsonl", dst / "records.jsonl", [])
    assert (dst / "records.jsonl").read_bytes() == files["rows.jsonl"]
    # What is cleaned changes that line only, keeping its ending.
    (src / "m.jsonl").write_bytes(b'{"a": 1}\r\n{"mt_model": "/home/ana/m"}\r\n\n')
    clean_records(src / "m.jsonl", dst / "m.jsonl", [])
    assert (dst / "m.jsonl").read_bytes() == b'{"a": 1}\r\n{"mt_model": "m"}\r\n\n'
    # A JSON string may hold U+2028 unescaped (json.dumps with ensure_ascii=False writes it so): one record, not two.
    (src / "u.jsonl").write_bytes('{"answer": "a\u2028b", "mt_model": "/home/ana/m"}\n'.encode())
    clean_records(src / "u.jsonl", dst / "u.jsonl", [])
    assert (dst / "u.jsonl").read_bytes() == '{"answer": "a\u2028b", "mt_model": "m"}\n'.encode()
    (src / "n.md").write_bytes(b"at /home/ana/x\r\nok\r\n")
    clean_file(src / "n.md", dst / "n.md", [])
    assert (dst / "n.md").read_bytes() == b"at x\r\nok\r\n"


def test_a_record_holding_u2028_is_read_and_published_whole(made, tmp_path):
    rows = [json.loads(line) for line in made["translated"].read_text(encoding="utf-8").split("\n") if line.strip()]
    rows[0]["answer"] += "\u2028más"  # json.dumps(ensure_ascii=False) leaves U+2028 unescaped
    data = tmp_path / made["translated"].name
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    push(data, "ana/x", dry_run=tmp_path / "dry")
    [published] = (tmp_path / "dry").rglob("*.jsonl")
    lines = [line for line in published.read_text(encoding="utf-8").split("\n") if line]
    assert len(lines) == len(rows) and json.loads(lines[0])["answer"] == rows[0]["answer"]  # one record, its text kept
