"""The shipped example policy's rules (deploy/examples/60-routing-policy.yaml), as the router
compiles them: the forms they are meant to decide, and the look-alikes they must leave to the
embedding stage (None). Prompts written for this table, not taken from the labelled splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelflock.router.classify.features import Features
from modelflock.router.classify.offline import bundle_from_files
from modelflock.router.classify.rules import classify_rules, compile_rules
from modelflock.router.config import Intent

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "60-routing-policy.yaml"


def _rules():  # type: ignore[no-untyped-def]
    spec = bundle_from_files([POLICY]).policy.spec.classifier
    return compile_rules([Intent.model_validate(i.model_dump(by_alias=True)) for i in spec.intents])


RULES = _rules()


@pytest.mark.parametrize(
    ("prompt", "intent"),
    [
        # A question may end in a parenthetical (the demo appends "(case N)"; people add
        # "(asking for my kid)"): the lookup form still holds.
        ("How many moons does Mars have?", "lookup"),
        ("How many moons does Mars have? (case 12)", "lookup"),
        ("How tall is the Eiffel Tower? (asking for a quiz)", "lookup"),
        ("How many moons does Mars have? Also, (why) do they orbit so fast", None),
        # Code named by its language after the thing ("errors in Rust"), SQL statements,
        # infrastructure files.
        ("What's the cleanest way to deal with errors in Go when every call can fail?", "code"),
        ("Why is my CREATE TABLE failing on the second column?", "code"),
        ("Write a Kubernetes manifest for a cron job that runs every hour.", "code"),
        ("What is the time complexity of a heap insert?", "code"),
        # Summary requests phrased as a question about the text.
        ("What's the bottom line of this memo: budgets frozen until May.", "summarize"),
        ("What's the short version of the Odyssey?", "summarize"),
        # Arithmetic with spaced operators, date arithmetic; a hyphen is not a minus.
        ("What is 17 - 9 times 3?", "reasoning"),
        ("What date is 90 days after 3 March?", "reasoning"),
        ("The match ended 4-3 after extra time, what a night", None),
        ("What is the capital of Peru?", "lookup"),
    ],
)
def test_example_policy_rules(prompt: str, intent: str | None) -> None:
    assert classify_rules(RULES, Features(prompt, len(prompt), "auto", {})) == intent
