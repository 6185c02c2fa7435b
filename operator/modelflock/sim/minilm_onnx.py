"""all-MiniLM-L6-v2 as one ONNX graph, run by onnxruntime on CPU.

The graph is built here, node by node, from the weights `MiniLM` loaded (no exporter, no
torch): the same BERT encoder, mean pooling and L2 normalisation as the numpy reference in
`modelflock.sim.minilm`, which the tests hold it to. onnxruntime's CPU kernels do the matrix
products about twice as fast as numpy's BLAS for the few rows of a short query (see
docs/retrieval.md), and its graph optimiser fuses the GELU and bias additions.

Inputs: `input_ids` and `attention_mask`, (batch, length) int64, padded to the longest text of
the batch. Output: `embedding`, (batch, 384) float32, rows of unit length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from modelflock.sim.minilm import Array, Ids, MiniLM

_OPSET = 18  # LayerNormalization (17) and ReduceSum with axes as an input (13)


class _Graph:
    """Collects nodes and weights; each node gets a fresh output name."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self._n = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        self.weights.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        names = []
        for _ in range(outputs):
            self._n += 1
            names.append(f"n{self._n}")
        self.nodes.append(self.helper.make_node(kind, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def build(model: MiniLM) -> bytes:
    """The serialized ONNX model of `model`'s encoder, pooling and normalisation."""
    from onnx import TensorProto

    g = _Graph()
    hidden, heads = model.dim, model.heads
    head_dim = hidden // heads
    ids, mask = "input_ids", "attention_mask"
    one = g.const("one", 1.0)
    i64 = np.int64
    # Embeddings: word + position (+ token type 0: every sequence holds one text).
    positions = g.op(
        "Range",
        g.const("zero_i", 0, i64),
        g.op("Gather", g.op("Shape", ids), g.const("one_i", 1, i64)),
        "one_i",
    )
    x = g.op(
        "Add",
        g.op("Gather", g.const("word", model.word), ids),
        g.op("Gather", g.const("position", model.position + model.token_type[0]), positions),
    )
    eps = model.eps
    x = g.op("LayerNormalization", x, g.const("emb_ln_w", model.emb_ln[0]),
             g.const("emb_ln_b", model.emb_ln[1]), axis=-1, epsilon=eps)  # fmt: skip
    maskf = g.op("Cast", mask, to=TensorProto.FLOAT)
    # Padded keys get a large negative score, so softmax gives them no weight.
    key_bias = g.op(
        "Unsqueeze",
        g.op("Mul", g.op("Sub", one, maskf), g.const("neg", -1e9)),
        g.const("axes_1_2", [1, 2], i64),
    )
    split = g.const("split", [hidden] * 3, i64)
    by_head = g.const("by_head", [0, 0, heads, head_dim], i64)
    merged = g.const("merged", [0, 0, hidden], i64)
    scale = g.const("scale", 1.0 / np.sqrt(head_dim))
    half, sqrt2 = g.const("half", 0.5), g.const("sqrt2", np.sqrt(2.0))
    for i, layer in enumerate(model.layers):

        def w(name: str, value: Array, i: int = i) -> str:
            return g.const(f"l{i}.{name}", value)

        qkv = g.op("Add", g.op("MatMul", x, w("qkv_w", layer.qkv_w)), w("qkv_b", layer.qkv_b))
        q, k, v = g.op("Split", qkv, split, outputs=3, axis=-1)
        q = g.op("Transpose", g.op("Reshape", q, by_head), perm=[0, 2, 1, 3])
        k = g.op("Transpose", g.op("Reshape", k, by_head), perm=[0, 2, 3, 1])
        v = g.op("Transpose", g.op("Reshape", v, by_head), perm=[0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), key_bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merged)
        out = g.op("Add", g.op("MatMul", context, w("out_w", layer.out_w)), w("out_b", layer.out_b))
        x = g.op("LayerNormalization", g.op("Add", out, x), w("ln1_w", layer.ln1_w),
                 w("ln1_b", layer.ln1_b), axis=-1, epsilon=eps)  # fmt: skip
        up = g.op("Add", g.op("MatMul", x, w("up_w", layer.up_w)), w("up_b", layer.up_b))
        # Exact GELU: x/2 (1 + erf(x/√2)); onnxruntime fuses it into one kernel.
        gelu = g.op(
            "Mul", g.op("Mul", up, half), g.op("Add", one, g.op("Erf", g.op("Div", up, sqrt2)))
        )
        down = g.op(
            "Add", g.op("MatMul", gelu, w("down_w", layer.down_w)), w("down_b", layer.down_b)
        )
        x = g.op("LayerNormalization", g.op("Add", down, x), w("ln2_w", layer.ln2_w),
                 w("ln2_b", layer.ln2_b), axis=-1, epsilon=eps)  # fmt: skip
    # Mean over the real tokens, then unit length.
    summed = g.op(
        "ReduceSum",
        g.op("Mul", x, g.op("Unsqueeze", maskf, g.const("axis_2", [2], i64))),
        g.const("axis_1", [1], i64),
        keepdims=0,
    )
    count = g.op("Max", g.op("ReduceSum", maskf, "axis_1", keepdims=1), g.const("tiny", 1e-9))
    pooled = g.op("Div", summed, count)
    norm = g.op(
        "Max",
        g.op("ReduceL2", pooled, g.const("axis_last", [-1], i64), keepdims=1),
        g.const("tinier", 1e-12),
    )
    g.nodes.append(g.helper.make_node("Div", [pooled, norm], ["embedding"]))
    h = g.helper
    graph = h.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            h.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "length"]),
            h.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "length"]),
        ],
        [h.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.weights,
    )
    onnx_model = h.make_model(graph, opset_imports=[h.make_opsetid("", _OPSET)])
    onnx_model.ir_version = 9  # what onnxruntime ≥ 1.17 reads
    data: bytes = onnx_model.SerializeToString()
    return data


class OnnxEncoder:
    """(input_ids, attention_mask) → unit vectors, through one onnxruntime session."""

    def __init__(self, model: MiniLM, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            from modelflock.sim.minilm import ModelNotInstalled

            raise ModelNotInstalled(
                f"the onnx runtime needs `onnx` and `onnxruntime` (the embed extra): {exc}"
            ) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Pool threads sleep between calls instead of spinning for work (a shared CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            build(model), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, ids: Ids, mask: Ids) -> Array:
        """Not reentrant-safe by contract: `MiniLM.encode` runs one batch at a time."""
        (vectors,) = self._session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        result: Array = np.asarray(vectors, dtype=np.float32)
        return result
