"""What a path medtune wrote is, and what of it goes to the Hub.

  * a run directory (recipe.yaml, report.json, model/ or adapter/ with medtune.json)
  * a model folder with medtune.json: a merge-adapter output, a `medtune quantize` folder (int8/int4, bnb,
    GPTQ, GGUF with its Modelfile), any model medtune saved
  * a `medtune merge` output (merge_report.json)
  * a `medtune eval` folder (report.json with tasks): published with the model it evaluated, under eval/
  * a `medtune translate` output (JSONL whose rows say machine_translated) or a `medtune synth` output
    (JSONL with OUT.provenance.json beside it): a dataset
  * a folder written by `medtune push --dry-run`, uploaded as it is
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medtune.data.prepare import source_names
from medtune.data.report import DataError
from medtune.data.synth import provenance_path
from medtune.data.tabular import json_lines
from medtune.eval.suite_report import load_suite_report
from medtune.eval.tasks import TaskError
from medtune.io import read_yaml_mapping
from medtune.merge.merge import REPORT as MERGE_REPORT
from medtune.models import MODEL_CARD, read_card
from medtune.quantize.report import REPORT as QUANTIZE_REPORT
from medtune.recipe import SourceConfig

MANIFEST = "medtune_push.json"  # written into every upload: what medtune published, and the mark of a dry-run folder
RUN_FILES = ("recipe.yaml", "report.json", "report.md", "loss_curve.png")  # a run's record, published under run/
# Not published: the trainer's pickled arguments (local paths, nothing a reader needs) and PEFT's template card.
NOT_PUBLISHED = {"training_args.bin", "README.md"}


class PushError(ValueError):
    """Something that cannot be published as asked; the message names the path or the argument."""


@dataclass
class ModelArtifact:
    """A model to publish and what medtune recorded about it."""

    path: Path  # what the user named
    folder: Path  # the model's own files
    card: dict  # its medtune.json ({} for a `medtune merge` output of models without one)
    run: Path | None = None  # the training run it comes from, when that is still on this machine
    merge: dict | None = None  # merge_report.json
    quantize: dict | None = None  # quantize_report.json
    evals: list[tuple[Path, dict]] = field(default_factory=list)  # `medtune eval` folders and their reports

    @property
    def is_run(self) -> bool:
        """The model is a run's own model/ or adapter/: the run's record and held-out results go with it."""
        return self.run is not None and self.folder.resolve().parent == self.run.resolve()

    @property
    def kind(self) -> str:
        if self.quantize or "quantization" in self.card:
            return "quantized"
        if self.merge:
            return "merge"
        if self.card.get("adapter"):
            return "adapter"
        return "merged-adapter" if self.card.get("merged_from") else "full"


@dataclass
class DatasetArtifact:
    """A translated or synthetic dataset: its JSONL rows and, for synth, its provenance."""

    data: Path
    rows: list[dict]
    provenance: dict | None  # OUT.provenance.json of `medtune synth`
    provenance_file: Path | None

    @property
    def kind(self) -> str:
        return "synthetic" if self.provenance is not None else "translated"


def recognise(path: Path, evals: list[Path] = ()) -> ModelArtifact | DatasetArtifact | Path:
    """The artifact at `path` (a Path when it is a dry-run folder); PushError when medtune did not write it."""
    if not path.exists():
        raise PushError(f"{path}: no such file or folder")
    if path.is_file() or path.suffix == ".jsonl":
        if evals:
            raise PushError("--eval attaches an evaluation to a model; a dataset has none")
        return _dataset(path)
    if (path / MANIFEST).is_file():
        if evals:
            raise PushError(f"{path}: a --dry-run folder is uploaded as it is; dry-run again with --eval")
        return path
    if _is_eval(path):
        if evals:
            raise PushError(f"{path}: an evaluation folder; give the model it evaluated as PATH, this one with --eval")
        report = _eval_report(path)
        model = Path(report["model"])
        if not model.exists():
            raise PushError(f"{path}: its report.json names the model {report['model']!r}, which is not on this machine "
                            "(or not from this working directory); push that model with --eval " + str(path))
        artifact = _model(model)
        artifact.evals.append((path, report))
        return artifact
    artifact = _model(path)
    named: dict[str, Path] = {}  # eval/NAME/ -> the folder published there
    for e in evals:
        name = e.resolve().name
        if name in named:
            if named[name].resolve() == e.resolve():
                continue  # the same folder given twice
            raise PushError(f"--eval {named[name]} and --eval {e}: both would be published as eval/{name}/; "
                            "rename one of the folders")
        named[name] = e
        artifact.evals.append((e, _eval_of(e, artifact)))
    return artifact


def _model(path: Path) -> ModelArtifact:
    if (path / MERGE_REPORT).is_file():
        return ModelArtifact(path, path, read_card(path)[1], merge=read_json(path / MERGE_REPORT))
    folder, card = read_card(path)
    if not card:
        raise PushError(f"{path}: not something medtune wrote: no {MODEL_CARD} (model), {MERGE_REPORT} (merge), "
                        "report.json with tasks (evaluation) or a translated/synthetic JSONL file")
    if folder != path:  # a run directory: model/ or adapter/ inside it
        missing = [f for f in ("recipe.yaml", "report.json") if not (path / f).is_file()]
        if missing:
            raise PushError(f"{path}: a run directory without {' and '.join(missing)}; was it copied in part?")
        return ModelArtifact(path, folder, card, run=path)
    quantize = read_json(path / f"{QUANTIZE_REPORT}.json") if (path / f"{QUANTIZE_REPORT}.json").is_file() else None
    return ModelArtifact(path, folder, card, run=_origin_run(path, card), quantize=quantize)


def _origin_run(path: Path, card: dict) -> Path | None:
    """The run a model was made from, when its folder is still here: a run's own model/ or adapter/ named
    directly, or the adapter folder a merged or quantized model's medtune.json says it was merged from."""
    own = str(path.resolve()) if path.name in ("model", "adapter") else None
    for ref in (own, card.get("merged_from"), card.get("quantization", {}).get("source_model")):
        if ref:
            run = Path(ref).parent
            if (run / "recipe.yaml").is_file() and (run / "report.json").is_file():
                return run
    return None


def _is_eval(path: Path) -> bool:
    """A `medtune eval` folder: a report.json with tasks (a run's report has a recipe.yaml beside it)."""
    report = path / "report.json"
    if not report.is_file() or (path / "recipe.yaml").exists():
        return False
    try:
        return "tasks" in json.loads(report.read_text(encoding="utf-8"))
    except ValueError:
        return False


def _eval_report(path: Path) -> dict:
    try:
        return load_suite_report(path)[0]
    except TaskError as err:
        raise PushError(str(err)) from None


def _eval_of(path: Path, model: ModelArtifact) -> dict:
    """The report of an evaluation of `model`; refused when it names another model."""
    if not _is_eval(path):
        raise PushError(f"--eval {path}: not a `medtune eval` folder (no report.json with tasks)")
    report = _eval_report(path)
    evaluated = Path(report["model"])
    if not (evaluated.is_dir() and _model_folder(evaluated) == _model_folder(model.path)):
        raise PushError(f"--eval {path}: it evaluated {report['model']!r}, not {model.path} "
                        "(or that model is not reachable from this working directory)")
    return report


def _model_folder(path: Path) -> Path:
    """The folder holding a run's or a model folder's weights, resolved: one model named two ways compares equal."""
    return (read_card(path)[0] or path).resolve()


def _dataset(path: Path) -> DatasetArtifact:
    if path.name.endswith(".provenance.json"):
        data = next((p for p in path.parent.glob("*.jsonl") if provenance_path(p) == path), None)
        if data is None:
            raise PushError(f"{path}: no JSONL file beside it that this provenance describes")
        path = data
    if path.suffix != ".jsonl" or not path.is_file():
        raise PushError(f"{path}: not something medtune wrote (datasets are the JSONL files of `medtune translate` "
                        "and `medtune synth`)")
    try:
        lines = json_lines(path)  # as the data loaders read JSONL
    except (OSError, DataError) as err:
        raise PushError(f"{path}: unreadable as UTF-8 text ({err})") from None
    rows = []
    for number, line in lines:
        try:
            row = json.loads(line)
        except ValueError as err:
            raise PushError(f"{path}: line {number} is not JSON ({err})") from None
        if not isinstance(row, dict):
            raise PushError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    prov = provenance_path(path)
    if not rows:
        dropped = f" (its provenance counts what was dropped: {read_json(prov).get('counts')})" if prov.is_file() else ""
        raise PushError(f"{path}: holds no records; nothing to publish{dropped}")
    if prov.is_file():
        return DatasetArtifact(path, rows, read_json(prov), prov)
    if all(r.get("machine_translated") is True for r in rows):
        return DatasetArtifact(path, rows, None, None)
    raise PushError(f"{path}: not written by `medtune translate` (rows without machine_translated: true) or "
                    f"`medtune synth` (no {prov.name} beside it)")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PushError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise PushError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class RunSource:
    name: str  # as the run's report names it
    loader: str
    path: str
    language: str
    train_records: int | None  # used for training (after splitting, capping and mixing)


def run_record(run: Path) -> tuple[dict, dict, list[RunSource]]:
    """A run's recipe (as a mapping), its report and its data sources."""
    recipe = read_yaml_mapping(run / "recipe.yaml", "recipe", PushError)
    report = read_json(run / "report.json")
    try:
        sources = [SourceConfig(**s) for s in recipe.get("data", {}).get("sources", [])]
    except (TypeError, ValueError) as err:
        raise PushError(f"{run / 'recipe.yaml'}: data.sources: {err}") from None
    used = (report.get("data") or {}).get("mix", {}).get("train", {})
    return recipe, report, [RunSource(n, s.loader, s.path, s.language, used.get(n))
                            for n, s in zip(source_names(sources), sources, strict=True)]


def model_files(artifact: ModelArtifact) -> dict[str, Path]:
    """Repository path -> file: the model's files at the top (so that from_pretrained(repo) loads them), the
    run's record under run/, each evaluation under eval/NAME/."""
    files = {p.relative_to(artifact.folder).as_posix(): p for p in _files(artifact.folder)
             if p.name not in NOT_PUBLISHED}
    if artifact.is_run:
        files |= {f"run/{p.name}": p for p in check_links(artifact.run, [artifact.run / name for name in RUN_FILES
                                                                          if (artifact.run / name).is_file()])}
    for folder, _ in artifact.evals:
        files |= {f"eval/{folder.resolve().name}/{p.relative_to(folder).as_posix()}": p for p in _files(folder)}
    return files


def _files(folder: Path) -> list[Path]:
    """Every file under `folder` but hidden ones (a staging folder, .cache) and checkpoints."""
    return check_links(folder, sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "checkpoints" for part in p.relative_to(folder).parts)))


def check_links(root: Path, files: list[Path]) -> list[Path]:
    """`files`, refused when a symbolic link among them leads out of `root`: publishing it would publish
    whatever it points to (a key file, someone's home)."""
    inside = root.resolve()
    outside = [f"{p} -> {p.resolve()}" for p in files if not p.resolve().is_relative_to(inside)]
    if outside:
        raise PushError(f"{root}: symbolic links out of it, not published: {'; '.join(outside)}; copy the files in "
                        "or remove the links")
    return files
