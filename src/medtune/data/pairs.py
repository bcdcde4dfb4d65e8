"""Ready-made preference pairs: JSONL with `prompt`, `chosen`, `rejected`, plain or conversational.

Each line is one pair, in one of TRL's three layouts:

  * standard: `{"prompt": str, "chosen": str, "rejected": str}`;
  * conversational, explicit prompt: `{"prompt": [messages], "chosen": [assistant message],
    "rejected": [assistant message]}`;
  * conversational, implicit prompt: `{"chosen": [messages], "rejected": [messages]}`, whose shared
    leading turns are the prompt and whose last turns are the two answers.

A pair becomes a `QARecord` with question = prompt, answer = chosen, rejected = rejected. A prompt is
one user turn, after optional system turns; a system turn is not kept (the recipe's `prompt.system`
is the system message of every chat), and multi-turn prompts are refused. Other record fields
(`id`, `focus`, `language`, …) are read from columns of the same name when present; `fields`
renames columns as for the tabular loaders (e.g. `{question: instruction}`).

A blank `chosen` is kept as an empty answer and a blank `rejected` as "" (never None: a record with
a `rejected` is a ready-made pair), so that alignment rejects and counts them; a malformed line
raises an error naming the file and line, or is skipped and counted with `on_bad_row: skip`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from medtune.data.chat import preset_config
from medtune.data.loaders import register_loader
from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import _Mapper, json_lines, parse_json
from medtune.recipe import SourceConfig
from medtune.records import QARecord

PAIR_FIELDS = {"question": "prompt", "answer": "chosen", "rejected": "rejected"}


@register_loader("pairs")
def load_pairs(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".jsonl":
        raise DataError(path, "the 'pairs' loader reads one .jsonl file of {prompt, chosen, rejected} lines")
    report.files_read += 1
    cfg = preset_config(cfg, PAIR_FIELDS)
    mapper = _Mapper(path, cfg)
    columns = {name: cfg.fields[name] for name in PAIR_FIELDS}
    for line, text in json_lines(path):
        report.rows_seen += 1
        try:
            item = _flatten(_parse(text, path, line), columns, path, line)
        except DataError as err:
            report.reject(err, cfg.on_bad_row)
            continue
        if (record := mapper.record(item, report, line=line)) is not None:
            yield replace(record, rejected=record.rejected or "")


def _parse(text: str, path: Path, line: int) -> dict[str, Any]:
    item = parse_json(text, path, line)
    if not isinstance(item, dict):
        raise DataError(path, f"expected an object, got a JSON {type(item).__name__}", line=line)
    return item


def _flatten(item: dict[str, Any], columns: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    """The item with a conversational pair turned into prompt / chosen / rejected strings."""
    prompt, chosen, rejected = (columns[k] for k in ("question", "answer", "rejected"))
    if not isinstance(item.get(chosen), list) and not isinstance(item.get(rejected), list):
        return item  # standard layout: the mapper checks columns and types
    for column in (chosen, rejected):
        _check_messages(item.get(column), column, path, line)
    good, bad = item[chosen], item[rejected]
    if prompt in item:
        _check_messages(item[prompt], prompt, path, line)
        turns = item[prompt]
    else:
        shared = 0  # the implicit prompt: the leading turns both conversations share
        while shared < min(len(good), len(bad)) - 1 and good[shared] == bad[shared]:
            shared += 1
        turns, good, bad = good[:shared], good[shared:], bad[shared:]
    return item | {
        prompt: _question(turns, prompt, path, line),
        chosen: _answer(good, chosen, path, line),
        rejected: _answer(bad, rejected, path, line),
    }


def _check_messages(value: Any, column: str, path: Path, line: int) -> None:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise DataError(path, "expected a list of {role, content} messages with text content", column=column, line=line)


def _question(turns: list[dict], column: str, path: Path, line: int) -> str:
    roles = [m["role"] for m in turns if m["role"] != "system"]
    if roles != ["user"]:
        raise DataError(path, f"the prompt must be one user turn (after optional system turns), got roles {roles}", column=column, line=line)
    return next(m["content"] for m in turns if m["role"] == "user")


def _answer(turns: list[dict], column: str, path: Path, line: int) -> str:
    if [m["role"] for m in turns] != ["assistant"]:
        roles = [m["role"] for m in turns]
        raise DataError(path, f"expected one assistant turn after the prompt, got roles {roles}", column=column, line=line)
    return turns[0]["content"]
