"""Classifier stages and the chain, as pure functions and with fake stages."""

from __future__ import annotations

import asyncio
import re

import pytest

from modelflock.router.classify.chain import ClassifierChain, RulesStage
from modelflock.router.classify.features import Features, StageFailure, Verdict
from modelflock.router.classify.llm import classifier_messages, parse_label
from modelflock.router.classify.rules import (
    classify_rules,
    compile_rules,
    keywords_regex,
    trie_alternation,
)
from modelflock.router.config import HeaderMatch, Intent
from modelflock.router.upstream import UpstreamFailure

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
        self, name: str, answer: str | None, delay: float = 0.0, fail: Exception | None = None
    ) -> None:
        self.name, self.answer, self.delay, self.fail = name, answer, delay, fail
        self.timeout = 0.05
        self.calls = 0

    async def decide(self, features: Features) -> Verdict:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return Verdict(self.answer)


async def test_no_stage_sure_is_default_a_failing_stage_is_degraded() -> None:
    unsure = FakeStage("embedding", None)
    decision = await ClassifierChain([RulesStage(RULES), unsure], "default").classify(f("hello"))
    assert (decision.intent, decision.classifier, decision.failures) == ("default", "default", ())

    slow = FakeStage("embedding", "code", delay=1.0)
    down = FakeStage("llm", "code", fail=StageFailure("unavailable", "HTTP 503 from clf"))
    chain = ClassifierChain([RulesStage(RULES), slow, down], "default")
    decision = await chain.classify(f("hello"))
    assert (decision.intent, decision.classifier) == ("default", "degraded")
    assert [(o.stage, o.outcome) for o in decision.trail] == [
        ("rules", "unsure"),
        ("embedding", "timeout"),
        ("llm", "unavailable"),
    ]
    assert [o.detail for o in decision.failures] == ["no answer within 50 ms", "HTTP 503 from clf"]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (StageFailure("warming", "examples"), "warming"),
        (StageFailure("bad_response", "nonsense"), "bad_response"),
        (UpstreamFailure("connect", "refused"), "unavailable"),
        (UpstreamFailure("status", "HTTP 500"), "unavailable"),
        (UpstreamFailure("protocol", "not JSON"), "bad_response"),
        (KeyError("data"), "bad_response"),
        (ConnectionResetError(), "unavailable"),
    ],
)
async def test_each_stage_failure_is_named(error: Exception, outcome: str) -> None:
    good = FakeStage("llm", "chat")
    chain = ClassifierChain([FakeStage("embedding", "code", fail=error), good], "default")
    decision = await chain.classify(f("hello"))
    # The next stage still decides; the failure is on record.
    assert (decision.intent, decision.classifier) == ("chat", "llm")
    assert [(o.stage, o.outcome) for o in decision.failures] == [("embedding", outcome)]


async def test_rules_decide_before_paid_stages_are_asked() -> None:
    paid = FakeStage("llm", "chat")
    decision = await ClassifierChain([RulesStage(RULES), paid], "default").classify(f("python"))
    assert (decision.intent, decision.classifier, paid.calls) == ("code", "rules", 0)


KEYWORDS = ["unit test", "unit tests", "c++", "c#", "tl;dr", "def ", "npm", "sum up", "summary"]
KEYWORDS += ["summarize", "sum", "Stack Trace", ".env", "big-o", "é-mail", "go"]


def _naive(keywords: list[str]) -> re.Pattern[str]:
    """One alternative per keyword, each with its own boundaries: what the trie must equal."""

    def one(k: str) -> str:
        prefix = r"(?<!\w)" if k[:1].isalnum() or k[:1] == "_" else ""
        suffix = r"(?!\w)" if k[-1:].isalnum() or k[-1:] == "_" else ""
        return prefix + re.escape(k) + suffix

    return re.compile("|".join(one(k) for k in keywords), re.IGNORECASE)


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("my unit tests fail", True),
        ("unit testing is fun", False),  # not a whole word
        ("I write C++ and C#", True),
        ("TL;DR: nothing", True),
        ("def main(): pass", True),
        ("undefined", False),
        ("npm's cache", True),
        ("summing up", False),
        ("Sum it", True),
        ("summarized", False),
        ("a STACK TRACE here", True),
        ("load .env files", True),
        ("what is big-o?", True),
        ("send an É-MAIL", True),
        ("let's go!", True),
        ("google it", False),
        ("", False),
    ],
)
def test_keyword_trie_matches_exactly_what_the_plain_alternation_matches(
    text: str, matches: bool
) -> None:
    trie = keywords_regex(KEYWORDS)
    assert bool(trie.search(text)) is matches
    assert bool(_naive(KEYWORDS).search(text)) is matches
    assert trie_alternation(["unit test", "unit tests", "unity"]) == "unit(?:\\ test(?:s)?|y)"
