"""The folder that goes to the Hub: staged, checked, then written as a dry run or uploaded.

One function builds it for both, so a `--dry-run` folder holds exactly what `upload_folder` receives:
the published files (medtune's text files as cleaned copies), README.md (the card) and medtune_push.json.
"""

from __future__ import annotations

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
from medtune.push.artifacts import MANIFEST, PushError, check_links, read_json
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
    card: str  # README.md
    secrets: list[str]
    data: set[str] = field(default_factory=set)  # repository paths of JSONL records, whose text is never rewritten
    # A dry-run folder pushed: it is staged again like any upload, and must come out byte for byte as it is.
    dry_run_of: Path | None = None
    source_name: str = ""  # for the manifest and the commit message; the dry-run folder's manifest keeps its own
    folders: list[Path] = field(default_factory=list)  # folders published whole (a model's, each --eval's)

    @property
    def name(self) -> str:
        return self.source_name or self.source.resolve().name

    @property
    def message(self) -> str:
        return f"medtune push: {self.kind} {self.name}"


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
                                   "kind": upload.kind, "source": upload.name, "files": names})
    check_folder(folder, upload)
    if upload.dry_run_of is not None:
        _check_unchanged(folder, upload.dry_run_of)


def _check_unchanged(staged_folder: Path, original: Path) -> None:
    """A dry-run folder goes up as it is: a file that the staging cleaned differently (edited after the dry
    run, say to add a key or a path) refuses the upload rather than be published in a form nobody read."""
    changed = [name for name in sorted(_tree(staged_folder)) if (staged_folder / name).read_bytes() != (original / name).read_bytes()]
    if changed:
        raise PushError(f"{original}: changed since `medtune push --dry-run` wrote it: cleaning would rewrite "
                        f"{', '.join(changed)} (a secret or local path in it); dry-run again and check the result")


def _tree(folder: Path) -> list[str]:
    """Every file under `folder`, hidden ones included, as repository paths."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


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
    if target.is_symlink():  # replacing it would swap the link for a folder and leave the old one beside it
        raise PushError(f"--dry-run {target}: a symbolic link; name a real folder")
    for folder in [upload.source, *upload.folders]:
        if folder.is_dir() and target.resolve().is_relative_to(folder.resolve()):
            raise PushError(f"--dry-run {target}: inside {folder}, which it would then publish too; choose a folder outside it")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).is_file())):
        raise PushError(f"--dry-run {target}: already holds files that `medtune push` did not write (no {MANIFEST}); "
                        "choose a new or empty folder")
    return replace_dir_atomic(target, lambda staging: stage(upload, staging, link=False), marker=MANIFEST)


@contextmanager
def staged(upload: Upload) -> Iterator[Path]:
    """The upload in a temporary folder beside its source (so that weights are hard links, not copies)."""
    with tempfile.TemporaryDirectory(dir=upload.source.resolve().parent, prefix=".push-") as tmp:
        stage(upload, Path(tmp), link=True)
        yield Path(tmp)


def dry_run_upload(folder: Path, repo: str, secrets: list[str]) -> Upload:
    """A folder written by `medtune push --dry-run`, to upload as it is: only the files its manifest lists
    (anything added since, hidden files included, is refused), staged and checked as any upload."""
    manifest = read_json(folder / MANIFEST)
    if manifest.get("repo") != repo:
        raise PushError(f"{folder}: written for {manifest.get('repo')!r} (its card names that repository), not --repo "
                        f"{repo}; dry-run again with --repo {repo}")
    listed = manifest.get("files")
    if not (isinstance(listed, list) and all(isinstance(n, str) for n in listed) and "README.md" in listed
            and manifest.get("repo_type") in ("model", "dataset")):
        raise PushError(f"{folder / MANIFEST}: not a manifest `medtune push --dry-run` wrote (files, repo_type)")
    present = set(_tree(folder)) - {MANIFEST}
    if extra := sorted(present - set(listed)):
        raise PushError(f"{folder}: holds files its {MANIFEST} does not list: {', '.join(extra)}; only what the dry "
                        "run wrote is published: remove them, or dry-run again")
    if missing := sorted(set(listed) - present):
        raise PushError(f"{folder}: missing files its {MANIFEST} lists: {', '.join(missing)}; dry-run again")
    try:
        card = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PushError(f"{folder / 'README.md'}: unreadable ({err})") from None
    check_links(folder, [folder / n for n in listed])
    files = {n: folder / n for n in sorted(listed) if n != "README.md"}
    data = {n for n in files if manifest["repo_type"] == "dataset" and n.startswith("data/") and n.endswith(".jsonl")}
    return Upload(repo, manifest["repo_type"], str(manifest.get("kind", "dry-run")), folder, files,
                  card, secrets, data=data, dry_run_of=folder,
                  source_name=str(manifest.get("source") or folder.resolve().name))
