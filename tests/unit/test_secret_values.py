"""Obvious placeholder credentials are caught; anything that could be a real key is not."""

from __future__ import annotations

import pytest

from modelflock.render.secret_values import placeholder_problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("replace-me", "is a placeholder"),  # what deploy/examples ship
        ("REPLACE-ME\n", "is a placeholder"),
        ("changeme", "is a placeholder"),
        ("your-api-key", "is a placeholder"),
        ("<your key>", "is a placeholder"),
        ("${OPENAI_API_KEY}", "is a placeholder"),
        ("{{ api_key }}", "is a placeholder"),
        ("sk-...", "is a placeholder"),  # the example in the Secret's comment
        ("sk-xxxxxxxx", "is a placeholder"),
        ("xxxx", "is a placeholder"),
        ("****", "is a placeholder"),
        ("", "is empty"),
        ("  \n", "is empty"),
        ("sk-proj-3f9c2a7b1e", None),
        ("hf_AbCdEf0123456789", None),
        ("demo-frontier-key", None),
        ("replace-me-not-really-a-placeholder-7f3a", None),
        ("secretive-token-42", None),
    ],
)
def test_placeholder_problem(value: str, expected: str | None) -> None:
    assert placeholder_problem(value) == expected
