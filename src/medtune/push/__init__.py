"""`medtune push PATH --repo OWNER/NAME`: publish what medtune wrote to the Hugging Face Hub with a card a
reader can trust, or (`dry_run`) write exactly that upload into a folder to check offline.

  * artifacts:    what PATH is (run, merge, quantized folder, evaluation, translated/synthetic dataset)
  * licenses:     the license and terms of each dataset medtune reads; the Hub's license ids
  * clean:        secrets and local paths out of every published file, and the final scan for them
  * model_card / dataset_card: README.md from what medtune recorded
  * upload:       the staged folder, shared by the dry run and the upload

Reads the artifacts of every stage, so it sits after them all; only huggingface_hub talks to the Hub.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from medtune.logs import log
from medtune.models import hub_reachable
from medtune.push.artifacts import DatasetArtifact, PushError, model_files, recognise
from medtune.push.clean import clean_text, secret_values
from medtune.push.dataset_card import dataset_card, dataset_files
from medtune.push.model_card import model_card
from medtune.push.upload import Upload, dry_run_upload, staged, write_dry_run

__all__ = ["PushError", "plan", "push"]

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What the Hub client raises when the Hub refuses a call or the connection fails: HfHubHTTPError's bases, its HTTP
# library's HTTPError (transport failures too) and OSError.
HUB_ERRORS = HfHubHTTPError.__bases__


def check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not REPO_ID.fullmatch(repo):
        raise PushError(f"--repo {repo!r}: not a repository id OWNER/NAME (e.g. ana/smollm2-medquad-lora)")
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise PushError(f"--repo {repo!r}: {err}") from None
    return repo


def plan(path: str | Path, repo: str, evals: list[str | Path] = ()) -> Upload:
    """What pushing `path` to `repo` would publish (files and card); refusals are PushError."""
    check_repo(repo)
    path, secrets = Path(path), secret_values()
    artifact = recognise(path, [Path(e) for e in evals])
    if isinstance(artifact, Path):
        return dry_run_upload(artifact, repo, secrets)
    if isinstance(artifact, DatasetArtifact):
        files = dataset_files(artifact)
        return Upload(repo, "dataset", artifact.kind, path, files, dataset_card(artifact, repo), secrets,
                      data={n for n, p in files.items() if p == artifact.data})
    kind = "run/" + artifact.kind if artifact.is_run else artifact.kind
    return Upload(repo, "model", kind, path, model_files(artifact), model_card(artifact, repo, secrets), secrets,
                  folders=[artifact.folder, *(e for e, _ in artifact.evals)])


def push(path: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
         dry_run: str | Path | None = None, evals: list[str | Path] = ()) -> str:
    """Publish `path` (anything medtune wrote) as `repo`; returns the repository's URL, or with `dry_run` the
    folder holding exactly what would be uploaded."""
    if dry_run is not None:
        upload = plan(path, repo, evals)
        out = write_dry_run(upload, Path(dry_run))
        log.info("push: dry run of %s (%s) for %s: %d files in %s", upload.source, upload.kind, upload.repo,
                 sum(1 for p in out.rglob("*") if p.is_file()), out)
        return str(out)
    # Before any work: reading, carding and scanning a model is wasted when it cannot go up.
    if not hub_reachable():
        raise PushError("the Hugging Face Hub cannot be reached from this machine (offline, or HF_HUB_OFFLINE=1); "
                        "write what would be uploaded with --dry-run DIR, check it, and push DIR from a machine that "
                        "reaches the Hub")
    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    upload = plan(path, repo, evals)
    api = HfApi(token=token)
    with staged(upload) as folder:
        try:
            url = api.create_repo(upload.repo, repo_type=upload.repo_type, private=private, exist_ok=True)
            if private and not api.repo_info(upload.repo, repo_type=upload.repo_type).private:
                raise PushError(f"--private: {upload.repo} already exists and is public, and pushing does not change "
                                "that; make it private on the Hub first, or choose another --repo")
            if revision and revision != "main":
                api.create_branch(upload.repo, branch=revision, repo_type=upload.repo_type, exist_ok=True)
            log.info("push: uploading %s (%s) to %s%s", upload.source, upload.kind, upload.repo,
                     f" @ {revision}" if revision else "")
            api.upload_folder(repo_id=upload.repo, folder_path=folder, repo_type=upload.repo_type, revision=revision,
                              commit_message=upload.message)
        except HUB_ERRORS as err:  # refused (401, 403, 404), or the connection failed
            raise PushError(f"--repo {upload.repo}: the Hub did not take the upload: "
                            f"{clean_text(str(err), upload.secrets)}") from None
    log.info("push: published %s", url)
    return str(url)
