import hashlib
import logging
import json
import shutil
import urllib.error
import zipfile
import urllib.request
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from medtune.data import DataError
from medtune import quickstart
from medtune.data.medquad import medquad_digest
from medtune.quickstart import find_medquad, summary_table
from medtune.recipe import load_recipe


def _xml_tree(root: Path) -> Path:
    (root / "1_CancerGov_QA").mkdir(parents=True)
    (root / "1_CancerGov_QA" / "0000001.xml").write_text("<Document/>")
    return root


def test_data_dir_may_hold_medquad_or_be_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    tree = _xml_tree(tmp_path / "shared" / "medquad")
    assert find_medquad(str(tmp_path / "shared")) == tree
    assert find_medquad(str(tree)) == tree
    monkeypatch.setenv("MEDTUNE_DATA_DIR", str(tmp_path / "shared"))
    assert find_medquad(None) == tree
    with pytest.raises(DataError, match="no MedQuAD XML tree here"):
        find_medquad(str(tmp_path))


SHARED_MEDQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "medquad"


def test_medquad_digest_is_sha256sum_of_the_xml_files_sha256sums(tmp_path):
    tree = _xml_tree(tmp_path / "medquad")
    (tree / "9_CDC_QA").mkdir()
    (tree / "9_CDC_QA" / "0000002.xml").write_bytes(b"<Document id='2'/>")
    (tree / "readme.txt").write_text("not read by the loader, not in the digest")
    listing = "".join(f"{hashlib.sha256((tree / f).read_bytes()).hexdigest()}  {f}\n"
                      for f in ["1_CancerGov_QA/0000001.xml", "9_CDC_QA/0000002.xml"])
    assert medquad_digest(tree) == hashlib.sha256(listing.encode()).hexdigest()


@pytest.mark.skipif(not SHARED_MEDQUAD.is_dir(), reason="MedQuAD not in shared data")
def test_pinned_digest_is_the_released_tree():
    assert medquad_digest(SHARED_MEDQUAD) == quickstart.MEDQUAD_DIGEST
    assert quickstart.MEDQUAD_COMMIT in quickstart.MEDQUAD_ARCHIVE


def test_a_data_dir_that_differs_from_the_pinned_release_is_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    tree = _xml_tree(tmp_path / "medquad")
    with caplog.at_level(logging.WARNING, logger="medtune"):
        assert find_medquad(str(tmp_path)) == tree  # used all the same: it may be a fork
    assert "differs from MedQuAD" in caplog.text and quickstart.MEDQUAD_COMMIT[:12] in caplog.text
    caplog.clear()
    monkeypatch.setattr(quickstart, "MEDQUAD_DIGEST", medquad_digest(tree))
    with caplog.at_level(logging.WARNING, logger="medtune"):
        find_medquad(str(tmp_path))
    assert not caplog.text


def _fake_download(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A MedQuAD archive served from a file: URL, laid out as GitHub's (one top folder), and the cache."""
    archive = tmp_path / "medquad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"MedQuAD-{quickstart.MEDQUAD_COMMIT}/1_CancerGov_QA/0000001.xml", "<Document/>")
        zf.writestr(f"MedQuAD-{quickstart.MEDQUAD_COMMIT}/readme.txt", "MedQuAD")
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quickstart, "MEDQUAD_ARCHIVE", archive.as_uri())
    return archive, tmp_path / "cache" / "data"


def test_download_that_matches_the_pinned_digest_is_cached(tmp_path, monkeypatch):
    _, data = _fake_download(tmp_path, monkeypatch)
    monkeypatch.setattr(quickstart, "MEDQUAD_DIGEST", medquad_digest(_xml_tree(tmp_path / "expected")))
    assert find_medquad(None) == data / "medquad"
    assert (data / "medquad" / "1_CancerGov_QA" / "0000001.xml").read_text() == "<Document/>"
    assert [p.name for p in data.iterdir()] == ["medquad"]  # no staging folder left


def test_download_that_differs_is_refused_and_not_cached(tmp_path, monkeypatch):
    _, data = _fake_download(tmp_path, monkeypatch)
    with pytest.raises(DataError) as exc:
        find_medquad(None)
    assert str(exc.value).startswith(quickstart.MEDQUAD_ARCHIVE) and "not MedQuAD at commit" in str(exc.value)
    assert not data.exists() or not any(data.iterdir())  # nothing cached, no staging folder left
    with pytest.raises(DataError):  # and the next run downloads and checks again
        find_medquad(None)


def test_offline_without_a_local_copy_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as exc:
        find_medquad(None)
    assert "--data-dir" in str(exc.value) and "MEDTUNE_DATA_DIR" in str(exc.value)
    assert not (tmp_path / "cache" / "data" / "medquad").exists()


def test_packaged_recipe_is_valid_and_uses_the_default_model(tmp_path):
    recipe = load_recipe(Path(str(resources.files("medtune") / "quickstart.yaml")), [f"data.sources.0.path={tmp_path}"])
    assert recipe.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert recipe.train.method == "lora" and recipe.eval.compare_before and len(recipe.eval.questions) == 3


def test_summary_table_shows_before_and_after():
    report = {
        "model": "m", "train": {"global_step": 32},
        "eval": {"metrics": {"perplexity": 6.99, "rougeL": 14.37}, "before": {"metrics": {"perplexity": 11.53, "rougeL": 12.35}},
                 "answers": [{"question": "Q?", "before": "old answer", "after": "new answer"}]},
    }
    console = Console(record=True, width=200)
    console.print(summary_table(report))
    text = console.export_text()
    assert "11.53" in text and "6.99" in text and "12.35" in text and "14.37" in text
    assert "old answer" in text and "new answer" in text and "never medical advice" in text


@pytest.mark.skipif(not SHARED_MEDQUAD.is_dir(), reason="MedQuAD not in shared data")
def test_grounded_answers_from_the_cached_medquad_index(tmp_path, monkeypatch, tiny_llama):
    """The quickstart's last word: the questions answered from an index built once into the cache, with sources."""
    from medtune.quickstart import grounded_answers, medquad_index

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    medquad = tmp_path / "medquad"
    shutil.copytree(SHARED_MEDQUAD / "9_CDC_QA", medquad / "9_CDC_QA")
    index = medquad_index(medquad)
    assert index.parent == tmp_path / "cache" / "indexes"
    built = (index / "manifest.json").stat().st_mtime_ns
    assert medquad_index(medquad) == index and (index / "manifest.json").stat().st_mtime_ns == built  # reused, not rebuilt
    # A cache built before question matching (no questions in its manifest) is rebuilt in place, with them.
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["questions"]["passages"] > 0
    (index / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "questions"}))
    (index / "questions.usearch").unlink()
    assert medquad_index(medquad) == index and json.loads((index / "manifest.json").read_text())["questions"] == manifest["questions"]
    assert (index / "questions.usearch").is_file()

    answers = grounded_answers(tiny_llama, index, ["What are the symptoms of Hantavirus Pulmonary Syndrome?",
                                                   "Should I double my dose of warfarin tonight?"])
    hanta, dose = answers
    assert hanta.sources and all("www.cdc.gov/" in s.url for s in hanta.sources)
    assert "hantavirus" in hanta.sources[0].title.lower() and hanta.sources[0].url in hanta.text
    assert hanta.reason in (None, "unsupported")  # a random model's text is checked against the sources, not trusted
    assert dose.reason == "refused" and not dose.sources  # the safety layer answers before any model does
