"""medtune: build, align, evaluate and serve grounded medical QA models."""

__version__ = "0.1.0"
# The small instruction model used when none is named; it also installs offline (see medtune.models).
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The sentence-embedding model retrieval uses when none is named; it also installs offline.
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def load(run_dir):
    """A `Predictor` for a finished run (or a model directory / hub id): `.predict(questions)`."""
    from medtune.predict import Predictor

    return Predictor.from_pretrained(run_dir)
