"""The real embedding model behind engine-sim's minilm mode: right numbers (both runtimes: the
numpy reference and the ONNX graph onnxruntime runs), served over HTTP."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from modelflock.sim.minilm import MiniLM
from support import MINILM_MODEL


@pytest.fixture(scope="module", params=["numpy", "onnx"])
def model(request: pytest.FixtureRequest) -> MiniLM:
    return MiniLM.load(runtime=request.param)


def test_the_onnx_graph_computes_what_the_numpy_reference_does() -> None:
    texts = [
        "What is the capital of France?",
        "x",
        "Robert'); DROP TABLE students;-- and ünïcödé ✓",
        "a much longer passage with many more word pieces than the others " * 12,
    ]
    reference, graph = MiniLM.load(runtime="numpy"), MiniLM.load(runtime="onnx")
    want, got = reference.encode(texts, batch_size=4), graph.encode(texts, batch_size=4)
    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
    assert got.tokens == want.tokens
    assert graph.runtime == "onnx" and not graph.layers  # no second copy of the weights


def test_matches_the_reference_embedding(model: MiniLM) -> None:
    # sentence-transformers' all-MiniLM-L6-v2 gives these first components for this sentence.
    vector = model.embed(["This is an example sentence"])[0]
    assert vector.shape == (384,)
    np.testing.assert_allclose(
        vector[:5], [0.0676569, 0.0634959, 0.0487131, 0.0793050, 0.0374480], atol=2e-6
    )
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_paraphrases_are_closer_than_unrelated_texts(model: MiniLM) -> None:
    a, b, c = model.embed(
        [
            "What is the capital of France?",
            "Paris is the capital of France.",
            "Write a Python function that reverses a list.",
        ]
    )
    assert float(a @ b) > 0.7
    assert float(a @ c) < 0.3


def test_batching_and_padding_do_not_change_vectors(model: MiniLM) -> None:
    texts = [
        "short",
        "a much longer sentence that needs padding in a batch " * 3,
        "mid length text",
    ]
    together = model.encode(texts, batch_size=3)
    for i, text in enumerate(texts):
        alone = model.encode([text])
        np.testing.assert_allclose(together.vectors[i], alone.vectors[0], atol=1e-5)
        assert together.tokens[i] == alone.tokens[0]
    assert together.tokens[0] == 3  # [CLS] short [SEP]


def test_long_texts_are_truncated_to_the_model_window(model: MiniLM) -> None:
    assert model.encode(["word " * 1000]).tokens == [model.max_tokens]


def test_engine_sim_serves_the_model_over_the_openai_api(minilm_server: str, model: MiniLM) -> None:
    client = openai.OpenAI(base_url=f"{minilm_server}/v1", api_key="unused")
    texts = ["This is an example sentence", "How do I reverse a list in Python?"]
    answer = client.embeddings.create(model=MINILM_MODEL, input=texts)
    got = np.array([d.embedding for d in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, model.embed(texts), atol=1e-5)
    assert answer.usage.prompt_tokens == sum(model.encode(texts).tokens)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="some-other-model", input="x")
