"""What must never leave this machine: tokens and other secrets, and local absolute paths.

Copies of medtune's own files (cards, reports, recipes) are cleaned: a secret becomes REMOVED, a local
path its last component (`/home/ana/runs/x/adapter` -> `adapter`). Then every file about to be uploaded,
binaries and data included, is scanned, and anything left refuses the upload: data rows are never rewritten.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune.push.artifacts import PushError
from medtune.records import QA_COLUMNS

REMOVED = "<removed>"
# Key names (split at _ - . and camel case) that hold a secret: `hub_token`, `api_key`, `wandbApiKey`,
# `NGROK_AUTHTOKEN`, `GITHUB_PAT`. Precise on purpose: `eos_token`, `answer_key` and `auth_method` are not.
SECRET_WORDS = frozenset({"apikey", "authtoken", "pat", "password", "passwd", "passphrase", "secret", "credential",
                          "credentials"})
KEY_KINDS = frozenset({"api", "secret", "access", "private", "auth", "client", "encryption", "signing", "ssh"})
# `X_token` names a tokenizer's special token (its text, not a secret) for these X.
SPECIAL_TOKENS = frozenset({"eos", "bos", "pad", "unk", "sep", "cls", "mask", "special", "start", "end", "stop",
                            "image", "audio", "video", "boi", "eoi", "additional", "default", "fim", "think"})
HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".jinja", ".csv", ".py")
# Files that transformers, PEFT, tokenizers and sentence-transformers write: their keys name special tokens
# (`eos_token`, `pad_token_id`), not secrets, so only secret values and local paths are cleaned in them.
LIBRARY_FILES = frozenset({
    "config.json", "generation_config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "quanto_qmap.json",
    "model.safetensors.index.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"})
TEXT_NAMES = ("Modelfile",)
# Tokenizer vocabularies: their entries are data (a code model's vocabulary can hold `/usr/bin`), so they are
# published as they are and scanned as binaries are, for secrets and this machine's folders.
VOCABULARIES = frozenset({"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt"})
GGUF_METADATA_BYTES = 64 << 20  # a GGUF file's strings (metadata, vocabulary) come before its tensors


_PART = r"[^\s/\\\"'`<>|:;,()\[\]{}]+"  # one path component
# What is a local path, in text: an absolute POSIX path of two components or more (`/home/ana/x`, `/fsx/runs`,
# `//home/ana`), a `~/` path, a file:// URL and a Windows drive path (`C:\Users\ana`, JSON's `C:\\Users`). Not:
# URLs (`https://host/a/b`: the slash follows a colon), `mg/kg/day`, dates, or API routes (`/v1/chat`, `/api/x`).
LOCAL_PATH = re.compile(
    r"\bfile://[^\s\"'`<>]*"
    r"|(?<![\w.~:/\\-])(?:~|/+(?!(?:v\d+|api)/)%s)(?:/%s)+/?" % (_PART, _PART)
    + r"|(?<![\w\\/])[A-Za-z]:[\\/]+%s(?:[\\/]+%s)*[\\/]*" % (_PART, _PART))


def _last_part(match: re.Match) -> str:
    """A local path shortened to its last component (`/home/ana/runs/x/adapter` -> `adapter`)."""
    return re.split(r"[\\/]+", match.group(0).rstrip("/\\"))[-1] or "~"


def secret_values() -> list[str]:
    """The secrets this process can see: the Hugging Face token (HF_TOKEN, the login cache) and every
    environment variable whose name says it holds one (WANDB_API_KEY, MEDTUNE_API_KEY, ...)."""
    from huggingface_hub import get_token

    values = {v for k, v in os.environ.items() if _is_secret_key(k) and len(v) >= 8}
    token = get_token()
    if token:
        values.add(token)
    return sorted(values, key=len, reverse=True)


def _is_secret_key(key: str) -> bool:
    words = [w.lower() for w in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", str(key)) if w]
    if not words:
        return False
    *before, last = words
    return (any(w in SECRET_WORDS for w in words)
            or (last == "token" and not (before and before[-1] in SPECIAL_TOKENS))  # hub_token, HF_TOKEN, token
            or (last == "key" and bool(before) and before[-1] in KEY_KINDS)  # api_key, secret_key, wandbApiKey
            or last == "auth")  # auth, basic_auth: the credentials themselves


def clean_text(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, REMOVED)
    text = HF_TOKEN.sub(REMOVED, text)
    return LOCAL_PATH.sub(_last_part, text)


def clean_value(value: Any, secrets: list[str], key: str = "", by_key: bool = True) -> Any:
    """A JSON or YAML value with secrets removed (by value, and with `by_key` by key name) and local paths
    shortened."""
    if isinstance(value, dict):
        return {clean_text(str(k), secrets): clean_value(v, secrets, str(k), by_key) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_value(v, secrets, "", by_key) for v in value]
    if not isinstance(value, str):
        return value
    return REMOVED if by_key and value and _is_secret_key(key) else clean_text(value, secrets)


def clean_yaml(text: str, secrets: list[str]) -> str:
    import yaml

    value = yaml.safe_load(text)
    cleaned = clean_value(value, secrets)
    return text if cleaned == value else yaml.safe_dump(cleaned, sort_keys=False, allow_unicode=True)


def clean_file(src: Path, dst: Path, secrets: list[str]) -> None:
    """A cleaned copy of a text file (never the source itself); a JSON or YAML file with nothing to clean keeps
    its bytes. One that cannot be read (not UTF-8, broken JSON or YAML) is refused, naming it: what cannot be
    parsed cannot be cleaned."""
    import yaml

    try:
        _clean_file(src, dst, secrets)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise PushError(f"{src}: cannot be checked for secrets and local paths, so not published: {_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _read(src: Path) -> str:
    """A text file as it is, line endings included (read_text would turn CRLF into LF)."""
    return src.read_bytes().decode("utf-8")


def _clean_file(src: Path, dst: Path, secrets: list[str]) -> None:
    text = _read(src)
    suffix = src.suffix.lower()
    if suffix == ".json":
        value = json.loads(text)
        cleaned = clean_value(value, secrets, by_key=src.name not in LIBRARY_FILES)
        text = text if cleaned == value else json.dumps(cleaned, indent=2, ensure_ascii=False) + "\n"
    elif suffix in (".yaml", ".yml"):
        text = clean_yaml(text, secrets)
    elif suffix == ".jsonl":
        text = _clean_lines(text, lambda row: clean_value(row, secrets))
    else:
        text = clean_text(text, secrets)
    dst.write_bytes(text.encode("utf-8"))


def _clean_lines(text: str, clean) -> str:
    """JSONL text with each record cleaned; a line with nothing to clean, a blank line and every line ending
    stay as they are."""
    out = []
    for line in text.split("\n"):  # not splitlines(): it also splits on U+2028, which a JSON string may hold
        body = line.rstrip("\r")
        if body.strip():
            value = json.loads(body)
            cleaned = clean(value)
            if cleaned != value:
                line = json.dumps(cleaned, ensure_ascii=False) + line[len(body):]
        out.append(line)
    return "\n".join(out)


def clean_records(src: Path, dst: Path, secrets: list[str]) -> None:
    """A cleaned copy of a JSONL file of records: the record's own fields (question, answer, context...) are
    data and stay as they are; the fields medtune added (`mt_model`, which can be a local path) are cleaned."""
    def clean(row: dict) -> dict:
        return {k: v if k in QA_COLUMNS else clean_value(v, secrets, k) for k, v in row.items()}

    try:
        dst.write_bytes(_clean_lines(_read(src), clean).encode("utf-8"))
    except ValueError as err:  # read before (artifacts._dataset): a file changed since
        raise PushError(f"{src}: cannot be checked for secrets and local paths: {_first_line(err)}") from None


def is_text(path: Path) -> bool:
    return (path.suffix.lower() in TEXT_SUFFIXES or path.name in TEXT_NAMES) and path.name not in VOCABULARIES


def leaks(folder: Path, secrets: list[str], local_dirs: list[Path]) -> list[str]:
    """`file: what` for every secret or local path left in `folder` (all files, binaries included). Text
    files are searched for any local path; binaries for the secrets and for `local_dirs`, this user's home
    and the working directory (short prefixes such as /tmp/ would turn up by chance in gigabytes of weights)."""
    found = []
    local = sorted({str(Path(d).resolve()) for d in [*local_dirs, Path.home(), Path.cwd()]} - {"/"}, key=len, reverse=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        for what in _leaks_in(path, secrets, local):
            found.append(f"{name}: {what}")
    return found


def _leaks_in(path: Path, secrets: list[str], local: list[str]) -> Iterator[str]:
    if is_text(path):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(s in line for s in secrets) or HF_TOKEN.search(line):
                yield f"line {number} holds a token or secret"
            elif m := LOCAL_PATH.search(line):
                yield f"line {number} holds the local path {m.group(0)!r}"
        return
    patterns = [s.encode() for s in secrets] + [p.encode() + b"/" for p in local]
    for chunk in _binary_strings(path):
        for p in patterns:
            if p in chunk:
                what = p.decode()
                yield "holds a token or secret" if what in secrets else f"holds the local path {what.rstrip('/')!r}"
                return


def _binary_strings(path: Path, block: int = 1 << 20) -> Iterator[bytes]:
    """The parts of a binary file that can hold text: a safetensors header, a GGUF file's metadata, the
    pickles of a torch zip file, or all of any other file, read in overlapping blocks."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if member.endswith(".pkl") or not member.split("/")[-2:-1] == ["data"]:
                    yield zf.read(member)
        return
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors":
            size = int.from_bytes(fh.read(8), "little")
            yield fh.read(min(size, 100 << 20))
            return
        limit = GGUF_METADATA_BYTES if path.suffix == ".gguf" else None
        tail, read = b"", 0
        while data := fh.read(block):
            yield tail + data
            tail, read = data[-256:], read + len(data)
            if limit and read >= limit:
                return
