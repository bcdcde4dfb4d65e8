"""medtune: build, align, evaluate and serve grounded medical QA models."""

__version__ = "0.1.0"


def load(run_dir):
    """A `Predictor` for a finished run (or a model directory / hub id): `.predict(questions)`."""
    from medtune.predict import Predictor

    return Predictor.from_pretrained(run_dir)
