"""Retrieval for grounded answers: passages, a hybrid BM25 + dense index, search, and its evaluation.

    passages, report = load_passages("data/medquad")        # or a passage JSONL / any QA file
    build_index(passages, "indexes/medquad", report=report)
    hits = Retriever(load_index("indexes/medquad")).search("how would i know if i have gout", k=5)
"""

from medtune.rag.evaluate import batch_retrieve, build_medquad_selftest, evaluate_retrieval
from medtune.rag.index import Index, IndexMismatch, build_index, load_index
from medtune.data.passages import Passage
from medtune.rag.passages import PassageReport, load_passages
from medtune.rag.retrieve import Fusion, Hit, Retriever

__all__ = [
    "Fusion", "Hit", "Index", "IndexMismatch", "Passage", "PassageReport", "Retriever",
    "batch_retrieve", "build_index", "build_medquad_selftest", "evaluate_retrieval", "load_index", "load_passages",
]
