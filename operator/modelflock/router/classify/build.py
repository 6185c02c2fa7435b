"""The classifier chain of one config version, built the same way for the router and for
`modelflock classify` (which evaluates a policy offline through this very code)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelflock.router.classify.cache import Vector, VectorCache
from modelflock.router.classify.calibrate import IntentIndex
from modelflock.router.classify.chain import ClassifierChain, RulesStage, Stage
from modelflock.router.classify.embedding import EmbeddingStage
from modelflock.router.classify.llm import LlmStage, answer_text, label_request
from modelflock.router.classify.rules import compile_rules
from modelflock.router.classify.scoring import DEFAULT_METHOD, Method
from modelflock.router.config import RouterConfig
from modelflock.router.upstream import ExpertRuntime, Upstream


@dataclass
class ClassifierMemory:
    """What outlives a config version: prompt vectors (LRU), example vectors by hash and the
    fitted indexes by the fingerprint of their examples."""

    prompts: VectorCache = field(default_factory=VectorCache)
    examples: dict[bytes, Vector] = field(default_factory=dict)
    indexes: dict[bytes, IntentIndex] = field(default_factory=dict)

    def remember(self, chain: ClassifierChain) -> None:
        """Keep exactly what the given chain uses (bounded by its examples)."""
        kept: dict[bytes, Vector] = {}
        indexes: dict[bytes, IntentIndex] = {}
        for stage in chain.stages:
            if isinstance(stage, EmbeddingStage):
                kept.update(stage.vectors)
                indexes.update(stage.fitted())
        self.examples = kept
        self.indexes = indexes


def examples_of(config: RouterConfig) -> list[tuple[str, str]]:
    """(intent, text) of every example, inline ones first, duplicates removed."""
    seen: set[tuple[str, str]] = set()
    out = []
    for intent in config.classifier.intents:
        for text in intent.examples:
            if (intent.name, text) not in seen:
                seen.add((intent.name, text))
                out.append((intent.name, text))
    return out


def embed_function(upstream: Upstream, expert: ExpertRuntime) -> Any:
    async def embed(texts: list[str]) -> list[list[float]]:
        body = await upstream.call_json(
            expert,
            "/embeddings",
            {"model": expert.config.model, "input": texts, "encoding_format": "float"},
        )
        data = sorted(body["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]

    return embed


def ask_function(upstream: Upstream, expert: ExpertRuntime) -> Any:
    async def ask(messages: list[dict[str, Any]], labels: list[str]) -> str:
        payload = label_request(expert.config.engine, expert.config.model, messages, labels)
        return answer_text(await upstream.call_json(expert, "/chat/completions", payload))

    return ask


def build_chain(
    config: RouterConfig,
    experts: Mapping[str, ExpertRuntime],
    upstream: Upstream,
    memory: ClassifierMemory,
    method: Method = DEFAULT_METHOD,
) -> ClassifierChain:
    intents = config.classifier.intents
    stages: list[Stage] = []
    for stage in config.classifier.stages:
        timeout = stage.timeout_milliseconds / 1000
        if stage.type == "rules":
            stages.append(RulesStage(compile_rules(intents)))
        elif stage.type == "embedding":
            expert = experts[str(stage.expert)]
            stages.append(
                EmbeddingStage(
                    examples_of(config),
                    embed_function(upstream, expert),
                    model=f"{expert.name}/{expert.config.model}",
                    min_confidence=float(stage.min_confidence),
                    timeout=timeout,
                    cache=memory.prompts,
                    known=memory.examples,
                    method=method,
                    fitted=memory.indexes,
                )
            )
        else:
            expert = experts[str(stage.expert)]
            labels = [i.name for i in intents]
            if config.classifier.default_intent not in labels:
                labels.append(config.classifier.default_intent)
            stages.append(LlmStage(intents, labels, ask_function(upstream, expert), timeout))
    return ClassifierChain(stages, config.classifier.default_intent)
