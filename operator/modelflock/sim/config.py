"""Settings of a simulated engine and the runtime-switchable behaviour used by tests."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from modelflock.sim.embedders import EmbeddingModel, Runtime

Flavour = Literal["vllm", "tgi"]

# ok: normal answers; error: HTTP `status` with an OpenAI-shaped error; refuse: a refusal text;
# truncate: finish_reason "length"; invalid_json: broken JSON text; empty: no content;
# low_confidence: normal text with low token logprobs; drop: close the connection unanswered;
# echo: the answer is the prompt as received (every message's text), so tests see what
# the router sent.
FailMode = Literal[
    "ok", "error", "refuse", "truncate", "invalid_json", "empty", "low_confidence", "drop", "echo"
]


class Behaviour(BaseModel):
    """What the engine does with requests; tests flip it at runtime via POST /sim/behaviour."""

    model_config = ConfigDict(extra="forbid")

    mode: FailMode = "ok"
    status: int = Field(default=500, ge=400, le=599, description="HTTP status for mode=error")
    first_byte_delay_seconds: float = Field(default=0.0, ge=0.0)
    ready: bool = Field(default=True, description="/health answers 200 only when ready")
    # Substring of the prompt -> exact reply text (e.g. a classifier expert answering a label).
    replies: dict[str, str] = Field(default_factory=dict)
    # Answer quality the tests control: this share of prompts (chosen by a hash of the prompt,
    # the same prompts for every engine) gets a degraded answer instead of the good one.
    degraded_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Judge mode: a judge prompt (modelflock.evaluation.judge) is answered A, B or TIE by
    # scoring both answers deterministically (the share of good-vocabulary words).
    judge: bool = False
    # Constrained requests (vLLM structured outputs / guided choice, TGI's JSON grammar):
    # honour them, or ignore them as a misconfigured engine would (free text comes back).
    constraints: Literal["honour", "ignore"] = "honour"


class SimSettings(BaseModel):
    """Static settings of one simulated engine (the CLI flags)."""

    model_config = ConfigDict(extra="forbid")

    flavour: Flavour = "vllm"
    model: str = "sim-model"
    max_batch: int = Field(default=8, ge=1)
    prefill_seconds: float = Field(default=0.02, ge=0.0)
    decode_seconds_per_token: float = Field(default=0.01, ge=0.0)
    output_tokens: int = Field(default=16, ge=0, description="answer length without max_tokens")
    kv_capacity_tokens: int = Field(default=16384, ge=1)
    max_concurrent: int = Field(default=1024, ge=1, description="beyond this: 429 (as TGI)")
    instant: bool = Field(default=False, description="no queueing or sleeping: for benchmarks")
    embedding_dim: int = Field(default=64, ge=2, description="dimensions of the hash embedder")
    embedding_model: EmbeddingModel = Field(
        default="hash", description="hash: hashed bag of words; minilm: all-MiniLM-L6-v2 on CPU"
    )
    embedding_runtime: Runtime = Field(
        default="onnx", description="minilm: onnx (onnxruntime) or numpy (the reference)"
    )
    embedding_threads: int = Field(default=1, ge=1, description="minilm: onnxruntime threads")
    api_key: str | None = Field(default=None, repr=False)
    legacy_kv_metric: bool = Field(
        default=False, description="vLLM: name the KV metric vllm:gpu_cache_usage_perc (old)"
    )
    behaviour: Behaviour = Field(default_factory=Behaviour)
