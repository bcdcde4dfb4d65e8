"""What medtune shows while it works: its own status lines (the `medtune` logger, INFO), one progress bar
per long stage, and nothing from the libraries below WARNING.

`setup` is called once by the command line (`-q` for warnings and errors only, `-v` for the libraries'
own logs and bars too); Python users may call it as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

log = logging.getLogger("medtune")

# Read by the libraries when they are imported: their own progress bars ("Loading weights", datasets'
# map and filter steps, TRL's tokenizing) and INFO logs stay off unless -v.
QUIET_LIBRARIES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "warning",
    "DATASETS_VERBOSITY": "warning",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # Bars of plain tqdm (transformers' GGUF reader); medtune's own bars set `disable` themselves. tqdm reads it
    # when first imported, so this module imports tqdm only in bar().
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",  # else the tokenizers library warns on every fork (dataloader workers, servers)
}
LIBRARIES = r"(transformers|peft|trl|accelerate|datasets|torch|huggingface_hub|sentence_transformers)(\.|$)"
BAR_DELAY_S = 2.0  # a stage that ends sooner shows no bar

_bars = True


def setup(verbosity: int = 0) -> None:
    """-1: warnings and errors only, no bars; 0: medtune's status lines and bars; 1: the libraries' too."""
    global _bars
    _bars = verbosity >= 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    log.propagate = False
    # The libraries' records, through one handler on the root logger: warnings and errors (with -v, their INFO
    # too) whatever level a library sets on its own logger (bm25s sets DEBUG), and no library can install a
    # handler of its own with logging.basicConfig (a bare logging.warning() call does that).
    libraries = logging.StreamHandler(sys.stderr)
    libraries.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    libraries.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    logging.getLogger().handlers[:] = [libraries]
    if verbosity > 0:
        return
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    # The libraries' deprecation notices about their own calls to each other (peft reading transformers'
    # renamed `is_gradient_checkpointing`): nothing a medtune user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=LIBRARIES)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=LIBRARIES)
    # peft saves the embedding with an adapter when a run added tokens (chat markers, pad): medtune's design.
    warnings.filterwarnings("ignore", message="Setting `save_embedding_layers` to `True`", module="peft")
    # bitsandbytes warns at import that an optional faster CPU kernel (fetched from the hub) is absent;
    # its own CPU kernels run instead.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # LLM.int8() says at every call that it computes in fp16: its design, not something to act on.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    # Libraries imported before this call read the variables already: tell them directly.
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.logging.set_verbosity_warning()
        datasets.disable_progress_bars()


@contextlib.contextmanager
def transformers_quiet():
    """transformers' and sentence-transformers' warnings held back for one call whose outcome medtune chose and
    reports itself (new token rows initialized at the mean, a new scoring head on an encoder)."""
    from transformers.utils import logging as hf_logging

    level, st = hf_logging.get_verbosity(), logging.getLogger("sentence_transformers")
    st_level = st.level
    hf_logging.set_verbosity_error()
    st.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        st.setLevel(st_level)


def bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", disable: bool = False, **kwargs):
    """A progress bar (tqdm) for one long stage; it appears only after BAR_DELAY_S and never with -q."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, delay=BAR_DELAY_S, leave=False,
                disable=disable or not _bars, dynamic_ncols=True, **kwargs)
