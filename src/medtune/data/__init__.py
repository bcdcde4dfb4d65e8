"""Data layer: loaders into `QARecord`s, deduplication, grouped splits, mixing and statistics."""

# Importing the loader modules registers them.
from medtune.data import chat  # noqa: F401  (ai_medical_chatbot, chatdoctor, medtext)
from medtune.data import medquad, tabular, text  # noqa: F401  (text: plain text for pretraining)
from medtune.data import mcq  # noqa: F401  (multiple-choice exams: headqa, medqa, mmlu, ...)
from medtune.data import pairs  # noqa: F401  (ready-made preference pairs)
from medtune.data.loaders import LOADERS, infer_loader, load_source, register_loader
from medtune.data.prepare import PreparedData, prepare_data
from medtune.data.report import DataError, LoadReport
from medtune.data.split import focus_overlap, group_key, normalize, split_indices, unique_indices
from medtune.data.stats import data_stats

__all__ = [
    "LOADERS",
    "DataError",
    "LoadReport",
    "PreparedData",
    "data_stats",
    "focus_overlap",
    "group_key",
    "infer_loader",
    "load_source",
    "normalize",
    "prepare_data",
    "register_loader",
    "split_indices",
    "unique_indices",
]
