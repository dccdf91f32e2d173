"""A tied embedding that ONNX Runtime's optimizer folded into two copies is stored once again, same outputs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from toolkit.compress._shared.graphs import share_tied_transposes


def _tied_graph(vocab: int = 50, hidden: int = 8) -> onnx.ModelProto:
    """What the optimizer leaves: Gather(W, ids) for the lookup and MatMul(h, Wᵀ) for the LM head, Wᵀ folded."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["W", "ids"], ["emb"], name="lookup"),
             helper.make_node("Tanh", ["emb"], ["h"]),
             helper.make_node("MatMul", ["h", "W_transposed"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ascontiguousarray(w.T), "W_transposed")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


def test_tied_embedding_stored_once_with_the_same_outputs():
    model = _tied_graph()
    ids = np.array([[3, 0, 49, 7], [1, 1, 2, 48]], dtype=np.int64)
    before = _run(model, ids)
    assert share_tied_transposes(model) == ["W"]
    assert [t.name for t in model.graph.initializer] == ["W_transposed"]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, ids), before, rtol=0, atol=1e-6)


def test_untied_weights_are_left_alone():
    model = _tied_graph()
    head = next(t for t in model.graph.initializer if t.name == "W_transposed")
    other = numpy_helper.to_array(head) + 1.0  # a separate LM head: not the embedding's transpose
    head.CopyFrom(numpy_helper.from_array(other, "W_transposed"))
    assert share_tied_transposes(model) == []
    assert len(model.graph.initializer) == 2
