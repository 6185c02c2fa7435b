"""Example prompts kept in ConfigMaps (RoutingPolicy spec.classifier.examplesFrom): parsed and
checked here (pure), rendered into the router config by render/policy.py."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from modelflock.api.routingpolicy import ExamplesSource

# ConfigMaps with this label re-render the policies of their namespace as soon as they change
# (others within the operator's resync interval).
EXAMPLES_LABEL = "modelflock.io/intent-examples"
MAX_EXAMPLE_CHARS = 4096
MAX_EXAMPLES = 5000  # per policy: the router embeds each once per config version


@dataclass(frozen=True)
class LoadedExamples:
    """Examples from every source, and what was wrong (for the policy's status)."""

    examples: tuple[tuple[str, str], ...] = ()  # (intent, prompt)
    problems: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=())  # "configmap/key" that do not exist


def parse_jsonl(
    text: str, where: str, intents: Collection[str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """Lines `{"prompt": str, "intent": str, ...}` (extra fields such as `hard` are ignored);
    blank lines and lines starting with # are skipped. Bad lines are reported, not fatal."""
    examples: list[tuple[str, str]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append(f"{where} line {number}: not JSON")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where} line {number}: not a JSON object")
            continue
        prompt, intent = row.get("prompt"), row.get("intent")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{where} line {number}: 'prompt' must be a non-empty string")
        elif len(prompt) > MAX_EXAMPLE_CHARS:
            problems.append(f"{where} line {number}: prompt longer than {MAX_EXAMPLE_CHARS}")
        elif not isinstance(intent, str) or intent not in intents:
            problems.append(f"{where} line {number}: intent {intent!r} is not defined")
        else:
            examples.append((intent, prompt))
    return examples, problems


def load_examples(
    sources: Sequence[ExamplesSource],
    config_maps: Mapping[str, Mapping[str, str] | None],
    intents: Collection[str],
) -> LoadedExamples:
    """`config_maps`: ConfigMap name → its data (None: not found)."""
    examples: list[tuple[str, str]] = []
    problems: list[str] = []
    missing: list[str] = []
    for source in sources:
        where = f"{source.config_map}/{source.key}"
        data = config_maps.get(source.config_map)
        if data is None or source.key not in data:
            missing.append(where)
            continue
        found, bad = parse_jsonl(data[source.key], where, intents)
        examples += found
        problems += bad
    if len(examples) > MAX_EXAMPLES:
        problems.append(f"{len(examples)} examples; only the first {MAX_EXAMPLES} are used")
        examples = examples[:MAX_EXAMPLES]
    return LoadedExamples(tuple(examples), tuple(problems), tuple(missing))
