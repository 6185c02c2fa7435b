"""A RoutingPolicy's classifier, run offline: the policy (from YAML files or the cluster) is
rendered into a router config exactly as the operator renders it, loaded exactly as the router
loads it, and its chain is built by the router's own code (classify/build.py); only the
experts' URLs are replaced by the ones given on the command line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelflock.api.common import object_document
from modelflock.api.modelexpert import ModelExpert
from modelflock.api.routingpolicy import RoutingPolicy
from modelflock.render.examples import LoadedExamples, load_examples
from modelflock.render.policy import (
    RouterSettings,
    can_embed,
    examples_problems,
    render_router_config,
    stage_problems,
)
from modelflock.router.classify.build import ClassifierMemory
from modelflock.router.classify.chain import ClassifierChain
from modelflock.router.classify.embedding import EmbeddingStage
from modelflock.router.classify.evaluate import Labelled, Outcome
from modelflock.router.classify.features import Features
from modelflock.router.config import RouterConfig
from modelflock.router.http1 import Http1Client
from modelflock.router.state import Secrets, build_state
from modelflock.router.upstream import Upstream
from modelflock.validation import describe


@dataclass(frozen=True)
class PolicyBundle:
    """A policy and the objects it refers to: its ModelExperts and example ConfigMaps."""

    policy: RoutingPolicy
    experts: dict[str, ModelExpert | None]
    config_maps: dict[str, dict[str, str] | None]


def _documents(paths: Sequence[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for path in paths:
        files += (
            sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        )
    docs = []
    for file in files:
        docs += [d for d in yaml.safe_load_all(file.read_text()) if isinstance(d, dict)]
    return docs


def parse_policy(doc: Mapping[str, Any]) -> RoutingPolicy:
    """As strict as the API server: camelCase keys only, quoted decimals."""
    try:
        return RoutingPolicy.model_validate(object_document(doc), by_alias=True, by_name=False)
    except ValidationError as error:
        name = (doc.get("metadata") or {}).get("name", "?")
        raise ValueError(f"RoutingPolicy {name}:\n{describe(error)}") from None


def bundle_from_files(paths: Sequence[Path], name: str | None = None) -> PolicyBundle:
    docs = _documents(paths)
    policies = [d for d in docs if d.get("kind") == "RoutingPolicy"]
    if name is not None:
        policies = [d for d in policies if (d.get("metadata") or {}).get("name") == name]
    if len(policies) != 1:
        found = [(d.get("metadata") or {}).get("name") for d in policies]
        raise ValueError(
            f"expected exactly one RoutingPolicy{f' named {name}' if name else ''}"
            f" in {', '.join(map(str, paths))}, found {found or 'none'} (use --name)"
        )
    policy = parse_policy(policies[0])
    experts: dict[str, ModelExpert | None] = {e: None for e in policy.spec.experts}
    config_maps: dict[str, dict[str, str] | None] = {}
    for doc in docs:
        meta_name = str((doc.get("metadata") or {}).get("name", ""))
        if doc.get("kind") == "ModelExpert" and meta_name in experts:
            experts[meta_name] = ModelExpert.model_validate(object_document(doc))
        elif doc.get("kind") == "ConfigMap":
            config_maps[meta_name] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
    return PolicyBundle(policy, experts, config_maps)


async def bundle_from_cluster(namespace: str, name: str) -> PolicyBundle:
    """Read the policy, its experts and its example ConfigMaps with the kubeconfig's rights."""
    from modelflock.controller.kube import Kube  # the Kubernetes client only when asked for

    kube = await asyncio.to_thread(Kube.connect)
    raw = await kube.get("modelflock.io/v1alpha1", "RoutingPolicy", name, namespace)
    if raw is None:
        raise ValueError(f"RoutingPolicy {namespace}/{name} not found")
    policy = parse_policy(raw)
    experts: dict[str, ModelExpert | None] = {}
    for expert in policy.spec.experts:
        found = await kube.get("modelflock.io/v1alpha1", "ModelExpert", expert, namespace)
        experts[expert] = (
            None if found is None else ModelExpert.model_validate(object_document(found))
        )
    config_maps: dict[str, dict[str, str] | None] = {}
    for source in policy.spec.classifier.examples_from:
        found = await kube.get("v1", "ConfigMap", source.config_map, namespace)
        config_maps[source.config_map] = None if found is None else dict(found.get("data") or {})
    return PolicyBundle(policy, experts, config_maps)


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str | None = None  # served model name; default: what the policy renders


@dataclass
class OfflineClassifier:
    """The policy's rendered router config with the given endpoints, and what was left out."""

    config: RouterConfig
    examples: LoadedExamples
    notes: list[str] = field(default_factory=list)


def offline_config(
    bundle: PolicyBundle, endpoints: Mapping[str, Endpoint], stage_timeout_ms: int | None = None
) -> OfflineClassifier:
    """Render as the operator does; stages whose expert has no endpoint given are left out
    (and said so), since nothing could answer for them."""
    policy = bundle.policy
    classifier = policy.spec.classifier
    intents = {i.name for i in classifier.intents} | {classifier.default_intent}
    loaded = load_examples(classifier.examples_from, bundle.config_maps, intents)
    notes = [p.message for p in examples_problems(loaded)]
    notes += [
        p.message
        for p in stage_problems(policy, bundle.experts)
        if p.reason != "StageExpertNotFound"  # offline, an expert may live in no given file
    ]
    rendered = render_router_config(
        policy, bundle.experts, RouterSettings(operator_url=None), examples=loaded.examples
    )
    stages = []
    for stage in classifier.stages:
        if stage.expert is not None:
            known = bundle.experts.get(stage.expert)
            if stage.expert not in endpoints:
                notes.append(f"{stage.type} stage left out: no URL given for expert {stage.expert}")
                continue
            if stage.type == "embedding" and known is not None and not can_embed(known):
                continue  # the operator leaves it out too (noted above)
        rendered_stage = stage.to_api()
        if stage.expert is not None and stage_timeout_ms is not None:
            rendered_stage["timeoutMilliseconds"] = stage_timeout_ms
        stages.append(rendered_stage)
    rendered["classifier"]["stages"] = stages or [{"type": "rules"}]
    for entry in rendered["experts"]:
        endpoint = endpoints.get(entry["name"])
        if endpoint is not None:
            entry["urls"] = [endpoint.url]
            entry["model"] = endpoint.model or entry["model"]
            entry.pop("apiKeyFile", None)
            if bundle.experts.get(entry["name"]) is None and any(
                s.get("expert") == entry["name"] and s["type"] == "embedding" for s in stages
            ):
                # Not in the given files: trust the URL to serve embeddings.
                entry["capabilities"] = sorted({*entry.get("capabilities", []), "embed"})
    try:
        config = RouterConfig.model_validate(rendered, by_alias=True, by_name=False)
    except ValidationError as error:
        raise ValueError(f"the rendered router config does not load:\n{describe(error)}") from None
    return OfflineClassifier(config, loaded, notes)


def with_stages(config: RouterConfig, count: int) -> RouterConfig:
    """The config with only its first `count` classifier stages."""
    stages = config.classifier.stages[:count]
    return config.model_copy(
        update={"classifier": config.classifier.model_copy(update={"stages": stages})}
    )


def stage_configurations(config: RouterConfig) -> list[tuple[str, RouterConfig]]:
    """rules; rules+embedding; rules+embedding+llm: every prefix of the chain."""
    names = [s.type for s in config.classifier.stages]
    return [("+".join(names[:n]), with_stages(config, n)) for n in range(1, len(names) + 1)]


class Evaluator:
    """Builds chains with the router's code and runs labelled prompts through them."""

    def __init__(self) -> None:
        self.client = Http1Client(connect_timeout=5.0)
        self.upstream = Upstream(self.client, None)
        self.memory = ClassifierMemory()

    def close(self) -> None:
        self.client.close()

    async def chain(self, config: RouterConfig) -> tuple[ClassifierChain, float]:
        """The chain, its examples embedded and calibrated (seconds it took)."""
        chain = build_state(config, Secrets({}), self.upstream, "offline", self.memory).chain
        started = time.perf_counter()
        for stage in chain.stages:
            if isinstance(stage, EmbeddingStage):
                await stage.prepare()
        self.memory.remember(chain)
        return chain, time.perf_counter() - started

    async def run(self, chain: ClassifierChain, rows: Sequence[Labelled]) -> list[Outcome]:
        outcomes = []
        for row in rows:
            decision = await chain.classify(Features(row.prompt, len(row.prompt), "auto", {}))
            outcomes.append(Outcome(row, decision))
        return outcomes
