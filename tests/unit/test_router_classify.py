"""Classifier stages and the chain, as pure functions and with fake stages."""

from __future__ import annotations

import asyncio

from modelflock.router.classify.chain import ClassifierChain, RulesStage
from modelflock.router.classify.embedding import EmbeddingStage, nearest_intent
from modelflock.router.classify.features import Features
from modelflock.router.classify.llm import classifier_messages, parse_label
from modelflock.router.classify.rules import classify_rules, compile_rules
from modelflock.router.config import HeaderMatch, Intent

INTENTS = [
    Intent(name="code", keywords=["python", "c++", "def ", "tl;dr"], patterns=[r"\bdef \w+\("]),
    Intent(name="premium", models=["gpt-big"], headers=[HeaderMatch(name="x-tier", value="gold")]),
    Intent(name="long", min_prompt_chars=1000),
    Intent(name="summarize", keywords=["summarize"], min_prompt_chars=20),
]
RULES = compile_rules(INTENTS)


def f(text: str, model: str = "auto", headers: dict[str, str] | None = None) -> Features:
    return Features(text, len(text), model, headers or {})


def test_rules_keywords_patterns_models_headers_and_length() -> None:
    assert classify_rules(RULES, f("Write PYTHON please")) == "code"
    assert classify_rules(RULES, f("is c++ fast?")) == "code"
    assert classify_rules(RULES, f("pythonic")) is None  # whole words only
    assert classify_rules(RULES, f("x = 1\ndef foo(a):")) == "code"
    assert classify_rules(RULES, f("what does def mean")) == "code"  # "def " keyword
    assert classify_rules(RULES, f("undef x")) is None  # word boundary before "def "
    assert classify_rules(RULES, f("TL;DR please")) == "code"
    assert classify_rules(RULES, f("hi", model="gpt-big")) == "premium"
    assert classify_rules(RULES, f("hi", headers={"x-tier": "gold"})) == "premium"
    assert classify_rules(RULES, f("y" * 1000)) == "long"
    assert classify_rules(RULES, f("summarize")) is None  # too short for that intent
    assert classify_rules(RULES, f("please summarize this long article")) == "summarize"
    assert classify_rules(RULES, f("hello")) is None


def test_nearest_intent_uses_cosine_and_a_minimum() -> None:
    examples = [("code", [1.0, 0.0]), ("chat", [0.0, 1.0])]
    assert nearest_intent([0.9, 0.1], examples, 0.5) == (
        "code",
        nearest_intent([0.9, 0.1], examples, 0.5)[1],
    )  # type: ignore[index]
    assert nearest_intent([0.7, 0.7], examples, 0.8) is None
    assert nearest_intent([1.0, 0.0], [], 0.1) is None


def test_parse_label_is_strict() -> None:
    labels = ["code", "chat"]
    assert parse_label("code", labels) == "code"
    assert parse_label(' "Code". ', labels) == "code"
    assert parse_label('{"intent": "chat"}', labels) == "chat"
    assert parse_label("code or chat", labels) is None
    assert parse_label("I think it is code", labels) is None
    assert parse_label("", labels) is None


def test_classifier_prompt_lists_the_labels() -> None:
    messages = classifier_messages(INTENTS[:1], ["code", "default"], "hello")
    assert "code, default" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "hello"}


class FakeStage:
    def __init__(
        self, name: str, answer: str | None, delay: float = 0.0, fail: bool = False
    ) -> None:
        self.name, self.answer, self.delay, self.fail = name, answer, delay, fail
        self.timeout = 0.05
        self.calls = 0

    async def decide(self, features: Features) -> str | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return self.answer


async def test_chain_hands_over_when_unsure_slow_or_failing() -> None:
    slow = FakeStage("embedding", "code", delay=1.0)
    broken = FakeStage("llm", "code", fail=True)
    chain = ClassifierChain([RulesStage(RULES), slow, broken], "default")
    decision = await chain.classify(f("hello"))
    assert (decision.intent, decision.classifier) == ("default", "default")
    assert [(o.stage, o.outcome) for o in decision.trail] == [
        ("rules", "unsure"),
        ("embedding", "timeout"),
        ("llm", "error"),
    ]
    good = FakeStage("llm", "chat")
    decision = await ClassifierChain([RulesStage(RULES), good], "default").classify(f("hi"))
    assert (decision.intent, decision.classifier) == ("chat", "llm")


async def test_rules_decide_before_paid_stages_are_asked() -> None:
    paid = FakeStage("llm", "chat")
    decision = await ClassifierChain([RulesStage(RULES), paid], "default").classify(f("python"))
    assert (decision.intent, decision.classifier, paid.calls) == ("code", "rules", 0)


async def test_embedding_stage_embeds_examples_once() -> None:
    calls: list[list[str]] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[1.0, 0.0] if "code" in t else [0.0, 1.0] for t in texts]

    stage = EmbeddingStage([("code", "code example"), ("chat", "hello")], embed, 0.5, 1.0)
    assert await stage.decide(f("some code")) == "code"
    assert await stage.decide(f("hey")) == "chat"
    assert calls[0] == ["code example", "hello"] and len(calls) == 3
