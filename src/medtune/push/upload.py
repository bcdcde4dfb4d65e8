"""The folder that goes to the Hub: staged, checked, then written as a dry run or uploaded.

One function builds it for both, so a `--dry-run` folder holds exactly what `upload_folder` receives:
the published files (medtune's text files as cleaned copies), README.md (the card) and medtune_push.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import DatasetCardData, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from medtune import __version__
from medtune.io import replace_dir_atomic, write_atomic, write_json
from medtune.push.artifacts import MANIFEST, PushError
from medtune.push.clean import clean_file, clean_records, clean_text, is_text, leaks
from medtune.push.licenses import HUB_LICENSES


@dataclass
class Upload:
    """What one push publishes."""

    repo: str
    repo_type: str  # model | dataset
    kind: str  # run/adapter, merge, quantized, translated, synthetic... (for the manifest and the commit message)
    source: Path  # what the user named
    files: dict[str, Path]  # repository path -> file on this machine
    card: str | None  # README.md; None for a dry-run folder, which holds its own
    secrets: list[str]
    data: set[str] = field(default_factory=set)  # repository paths of JSONL records, whose text is never rewritten

    @property
    def message(self) -> str:
        return f"medtune push: {self.kind} {self.source.name}"


def stage(upload: Upload, folder: Path, *, link: bool) -> None:
    """Write the upload into the empty `folder`: text files of medtune's cleaned, others hard-linked (`link`,
    for an upload that is deleted afterwards) or copied; then the card and the manifest; then check it all."""
    for name, src in upload.files.items():
        dst = folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if name in upload.data:
            clean_records(src, dst, upload.secrets)
        elif is_text(src):
            clean_file(src, dst, upload.secrets)
        elif link:
            try:
                os.link(src, dst)
            except OSError:  # another filesystem
                shutil.copy2(src, dst)
        else:
            shutil.copy2(src, dst)
    write_atomic(folder / "README.md", clean_text(upload.card, upload.secrets))
    names = sorted([*upload.files, "README.md"])
    write_json(folder / MANIFEST, {"medtune": __version__, "repo": upload.repo, "repo_type": upload.repo_type,
                                   "kind": upload.kind, "source": upload.source.name, "files": names})
    check_folder(folder, upload)


def check_folder(folder: Path, upload: Upload) -> None:
    """The card validates as Hub metadata, and no secret or local path is left anywhere."""
    validate_card(folder / "README.md", upload.repo_type)
    found = leaks(folder, upload.secrets, [upload.source.resolve().parent])
    if found:
        raise PushError(f"{upload.source}: not published: what would be uploaded still holds local information — "
                        + "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else ""))


def validate_card(readme: Path, repo_type: str) -> dict:
    """The card's metadata through huggingface_hub's own parsers (offline), plus the Hub's license rule."""
    try:
        meta = metadata_load(readme) or {}
        if repo_type == "model":
            ModelCardData(**dict(meta))
            if "model-index" in meta:
                model_index_to_eval_results(meta["model-index"])
        else:
            DatasetCardData(**dict(meta))
    except (ValueError, KeyError, TypeError) as err:
        raise PushError(f"{readme}: the card's metadata does not validate: {err}") from None
    license_id = meta.get("license")
    if license_id not in HUB_LICENSES or (license_id == "other" and not meta.get("license_name")):
        raise PushError(f"{readme}: license {license_id!r} is not a Hub license id (or `other` with a license_name)")
    return meta


def write_dry_run(upload: Upload, target: Path) -> Path:
    """The upload as the folder `target`, built beside it and renamed into place; a folder that medtune's push
    did not write there (no medtune_push.json) is refused."""
    if upload.source.is_dir() and target.resolve().is_relative_to(upload.source.resolve()):
        raise PushError(f"--dry-run {target}: inside {upload.source}, which it would then publish too; choose a folder outside it")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file())):
        raise PushError(f"--dry-run {target}: already holds files that `medtune push` did not write (no {MANIFEST}); "
                        "choose a new or empty folder")
    return replace_dir_atomic(target, lambda staging: stage(upload, staging, link=False), marker=MANIFEST)


@contextmanager
def staged(upload: Upload) -> Iterator[Path]:
    """The upload in a temporary folder beside its source (so that weights are hard links, not copies)."""
    if upload.card is None:  # a dry-run folder: uploaded as it is, after the same checks
        check_folder(upload.source, upload)
        yield upload.source
        return
    with tempfile.TemporaryDirectory(dir=upload.source.resolve().parent, prefix=".push-") as tmp:
        stage(upload, Path(tmp), link=True)
        yield Path(tmp)


def dry_run_upload(folder: Path, repo: str, secrets: list[str]) -> Upload:
    """A folder written by `medtune push --dry-run`, to upload as it is."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("repo") != repo:
        raise PushError(f"{folder}: written for {manifest.get('repo')!r} (its card names that repository), not --repo "
                        f"{repo}; dry-run again with --repo {repo}")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return Upload(repo, manifest["repo_type"], manifest.get("kind", "dry-run"), folder, files, None, secrets)
