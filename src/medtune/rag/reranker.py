"""A cross-encoder re-ranker at query time: `predict(pairs) -> scores` for (question, passage) pairs.

Backends as the embedder's: "onnx" (a float32 export, made once into medtune's cache; the default: the same
scores as sentence-transformers' CrossEncoder, 1.06-1.2x faster on 2 cores), "torch" (CrossEncoder itself)
and "onnx-int8" (about twice as fast, but a re-ranker separates close candidates, and int8 weights changed
its first pick on a third of the queries: benchmarks/reranker_latency.py). The top 20 of a query are scored
in one batch on the CPU.
Scores are the model's relevance probability (a sigmoid over its single logit, as CrossEncoder.predict
gives them).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from medtune.rag.embedder import BACKENDS, is_bi_encoder, onnx_session, resolve_folder


class Reranker:
    def __init__(self, ref: str, backend: str = "onnx"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown re-ranking backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from sentence_transformers import CrossEncoder

        self.model_id, folder = resolve_folder(ref, what="re-ranking model", flag="reranker")
        if is_bi_encoder(folder):  # it would load with an untrained scoring head
            raise ValueError(f"{ref}: a sentence embedding model (bi-encoder), not a cross-encoder; give it to index build "
                             "--embedder, and --reranker a train.objective: reranker run or a CrossEncoder")
        self.backend = backend
        self.cross_encoder = CrossEncoder(str(folder), device="cpu")
        if self.cross_encoder.num_labels != 1:
            raise ValueError(f"{ref}: a re-ranker scores relevance with one output; this model has {self.cross_encoder.num_labels} labels")
        self.tokenizer, self.max_length = self.cross_encoder.tokenizer, self.cross_encoder.max_length
        self.lock = threading.Lock()  # a fast tokenizer's truncation and padding state is shared: one call at a time (server threads)
        self.session = None
        if backend != "torch":
            self.input_names = list(self.tokenizer.model_input_names)
            self.session = onnx_session(self.cross_encoder.model, self.tokenizer, folder, self.model_id, ("logits", {0: "batch"}),
                                        "reranker", int8=backend == "onnx-int8")

    def describe(self) -> dict:
        return {"model": self.model_id, "backend": self.backend, "max_length": self.max_length}

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Relevance in [0, 1] of each (question, passage) pair, in the order given."""
        if self.session is None:
            with self.lock:
                return np.asarray(self.cross_encoder.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float32)
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            with self.lock:
                enc = self.tokenizer([q for q, _ in chunk], [p for _, p in chunk], padding=True, truncation="longest_first",
                                     max_length=self.max_length, return_tensors="np")
            logits = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.input_names})[0]
            out[start : start + len(chunk)] = 1 / (1 + np.exp(-logits[:, 0]))
        return out


def load_reranker(ref, backend: str = "onnx"):
    """A Reranker for a run directory of `train.objective: reranker`, a CrossEncoder folder or hub id; an object
    that already scores pairs (a Reranker, a test's stand-in) is kept."""
    return Reranker(str(ref), backend) if isinstance(ref, (str, os.PathLike)) else ref
