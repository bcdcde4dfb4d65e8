"""What every engine shares: its Completion, its errors (which the server maps to HTTP statuses)
and how streamed text is trimmed."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("medtune.engines")

SAMPLING_EPS = 1e-5  # as vLLM: below this a temperature is greedy decoding


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class RequestRejected(ValueError):
    """This request cannot be generated (its chat template refuses the conversation, an empty prompt)."""


class ContextTooLong(RequestRejected):
    """Prompt tokens + max_tokens exceed the model's context."""


class EngineBusy(RuntimeError):
    """The queue is full; `retry_after` is a guess, in whole seconds, of when there will be room."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


class EngineTimeout(TimeoutError):
    """The request did not finish within its timeout (queueing included)."""

    def __init__(self):
        super().__init__("the request timed out before the answer was complete")


class GenerationFailed(RuntimeError):
    """generate raised: not the request's fault. The cause is logged under `log_id`, never sent to clients."""

    def __init__(self, exc: BaseException):
        self.log_id = uuid.uuid4().hex[:12]
        super().__init__(f"generation failed (log id {self.log_id})")
        log.error("generation failed (log id %s)", self.log_id, exc_info=exc)


class EngineUnavailable(RuntimeError):
    """The upstream cannot be reached (after the retries)."""


class Trimmed:
    """Streamed text with its leading and trailing whitespace held back, so that the stream equals
    the stripped whole text a non-streaming answer returns."""

    def __init__(self):
        self.text = ""  # emitted so far
        self._held = ""  # trailing whitespace, emitted only if more text follows

    def push(self, new: str, final: bool = False) -> str:
        s = self._held + new
        if not self.text:
            s = s.lstrip()
        out = s.rstrip()
        self._held = "" if final else s[len(out) :]
        self.text += out
        return out
