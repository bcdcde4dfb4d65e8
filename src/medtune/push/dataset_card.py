"""The README.md of a dataset repository: where every row came from (source records, translation or
synthesis model, filters and what they dropped) and the licenses the rows inherit. A dataset that holds
records whose terms forbid redistribution is refused, naming them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from huggingface_hub import DatasetCardData

from medtune.push.artifacts import DatasetArtifact, PushError, check_links
from medtune.push.licenses import UNKNOWN, by_path, card_license, combined, of_record

SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))


def inherited(d: DatasetArtifact) -> Counter:
    """Rows per license entry. A translated row keeps its source record's `source` field. A synthetic row is
    made from its passage: its source file's entry counts, unless the row's own `source` names a known dataset
    (a passage file gathered from several), which then counts — always when its terms forbid redistribution."""
    if d.provenance is None:
        return Counter(of_record(str(r.get("source") or ""), r.get("answer")) for r in d.rows)
    from_file = by_path(str((d.provenance.get("source") or {}).get("path", "")))
    licenses = Counter()
    for r in d.rows:
        own = of_record(str(r.get("source") or ""), r.get("context") or r.get("answer")) if r.get("source") else UNKNOWN
        licenses[own if own is not UNKNOWN and (from_file is None or own.redistributable is False)
                 else from_file or UNKNOWN] += 1
    return licenses


def check_redistributable(d: DatasetArtifact, licenses: Counter) -> None:
    refused = [(entry, n) for entry, n in licenses.items() if entry.redistributable is False]
    if refused:
        what = "; ".join(f"{n} rows from {e.name}: {e.terms}" for e, n in refused)
        raise PushError(f"{d.data}: refusing to publish: its sources forbid redistribution — {what}. "
                        "Remove those rows (their `source` field names them) and push again")


def data_path(d: DatasetArtifact) -> str:
    return f"data/{d.data.name}"


def dataset_card(d: DatasetArtifact, repo: str) -> str:
    licenses = inherited(d)
    check_redistributable(d, licenses)
    license_id = combined([e.license for e in licenses]) if licenses else "unknown"
    languages = sorted({str(r["language"]) for r in d.rows if r.get("language")})
    size = next((label for limit, label in SIZES if len(d.rows) < limit), "other")
    meta = {
        "language": languages or None,
        "size_categories": [size],
        "task_categories": ["question-answering"],
        "tags": ["medtune", "medical", "synthetic" if d.kind == "synthetic" else "machine-translated"],
        "source_datasets": sorted({e.hub for e in licenses if e.hub}) or None,
        "language_creators": ["machine-generated"],
        "pretty_name": repo.split("/")[1],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_path(d)}]}],
    } | card_license(license_id)
    card_data = DatasetCardData(**{k: v for k, v in meta.items() if v is not None})
    provenance = _synthetic(d) if d.kind == "synthetic" else _translated(d)
    body = [f"# {repo.split('/')[1]}", "",
            f"{len(d.rows):,} medical question-answer records " + ("generated from medical text by an LLM with "
            "`medtune synth`." if d.kind == "synthetic" else "machine-translated with `medtune translate`."),
            "Not reviewed by clinicians: read it as training data, not as medical information.", "",
            *provenance, *_license_section(licenses, license_id), *_medical_section(d), *_files_section(d)]
    return f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n"


def _translated(d: DatasetArtifact) -> list[str]:
    for number, r in enumerate(d.rows, 1):
        flags = r.get("mt_flags")
        if flags is not None and not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise PushError(f"{d.data}: record {number}: mt_flags is {flags!r}, not a list of flag names "
                            "(`medtune translate` writes one)")
    models = Counter(str(r.get("mt_model")) for r in d.rows)
    directions = Counter(f"{r.get('translated_from')} → {r.get('language')}" for r in d.rows)
    flags = Counter(f for r in d.rows for f in r.get("mt_flags") or [])
    flagged = sum(bool(r.get("mt_flags")) for r in d.rows)
    lines = ["## Provenance", "",
             f"- translation model: {', '.join(f'`{m}` ({n} rows)' for m, n in models.items())}",
             f"- direction: {', '.join(f'{k} ({n} rows)' for k, n in directions.items())}",
             "- each row keeps its source record's `id` (also as `source_id`), `source`, `url` and `focus`",
             f"- quality flags (`mt_flags`): {flagged:,} of {len(d.rows):,} rows flagged"
             + (": " + ", ".join(f"{k} {n}" for k, n in sorted(flags.items())) if flags else ""),
             "  (`numbers`: a number of the source is missing; `units`: a quantity lost its number or unit; "
             "`short`: under half the source's length; `empty`; `identical`: left untranslated). Flagged rows are "
             "kept, and marked.",
             "- rows dropped (`--drop-flagged`) and the source file's name: not recorded in the output file",
             ""]
    return lines


def _synthetic(d: DatasetArtifact) -> list[str]:
    p = d.provenance or {}
    source, counts, filters = p.get("source") or {}, p.get("counts") or {}, p.get("filters") or {}
    lines = ["## Provenance", "",
             f"- synthesis model: `{p.get('model')}` (prompt version {p.get('prompt_version')}, "
             f"{p.get('per_passage')} pair(s) asked per passage, generation {json.dumps(p.get('generation'))})",
             f"- source: `{Path(str(source.get('path', 'unknown'))).name}` (loader {source.get('loader')}, sha256 "
             f"`{source.get('sha256')}`); each row keeps its passage as `context`",
             f"- made: {p.get('created')}",
             "- filters: " + ", ".join(f"{k} {v}" for k, v in filters.items() if not isinstance(v, str)),
             f"  (support: {filters.get('support')}; dedup: {filters.get('dedup')})", "",
             "| step | count |", "|---|---:|"]
    for key, value in counts.items():
        if isinstance(value, dict):
            lines += [f"| {key}: {k} | {v:,} |" for k, v in value.items()]
        else:
            lines.append(f"| {key} | {value:,} |")
    return [*lines, ""]


def _license_section(licenses: Counter, license_id: str) -> list[str]:
    lines = ["## Licenses inherited from the sources", "", "| source | rows | license | terms |", "|---|---:|---|---|"]
    lines += [f"| {e.name} | {n:,} | `{e.license}` | {e.terms} |" for e, n in licenses.most_common()]
    unknown = [e for e in licenses if e.license == "unknown"]
    lines += ["", f"This dataset's license: `{license_id}`" + (
        " — **unknown**: the terms of " + ", ".join(e.name for e in unknown) + " could not be determined; check "
        "them before using or sharing these rows." if license_id == "unknown" else
        " (the sources' licenses differ; each row is under its source's, listed above)." if license_id == "other" else
        ", the license of its sources; keep their attribution.")]
    return [*lines, ""]


def _medical_section(d: DatasetArtifact) -> list[str]:
    return ["## Medical use", "",
            "- Intended use: training and evaluating medical question-answering models.",
            "- **Not medical advice**, and not checked by clinicians. " + (
                "The generating model can state things its passage does not support; answers were filtered by word "
                "overlap with the passage, which is not a fact check." if d.kind == "synthetic" else
                "Machine translation can change doses, units, negations and drug names; `mt_flags` catches missing "
                "numbers and units only."), ""]


def _files_section(d: DatasetArtifact) -> list[str]:
    lines = ["## Files", "", f"- `{data_path(d)}`: the records, one JSON object per line (medtune's record fields)"]
    if d.provenance_file:
        lines.append(f"- `{d.provenance_file.name}`: the provenance `medtune synth` wrote (local paths shortened)")
    return [*lines, "- `medtune_push.json`: what `medtune push` published"]


def dataset_files(d: DatasetArtifact) -> dict[str, Path]:
    files = {data_path(d): d.data}
    if d.provenance_file:
        files[d.provenance_file.name] = check_links(d.data.parent, [d.provenance_file])[0]
    return files
