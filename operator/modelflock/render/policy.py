"""RoutingPolicy (+ the live state of its experts) → the router's config file, and the policy's
status. Pure and stable: the same inputs give byte-identical YAML, so nothing restarts
needlessly. API keys appear only as paths of mounted Secret files, never as values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from modelflock.api.conditions import remove_condition, set_condition
from modelflock.api.knowledgebase import KnowledgeBase
from modelflock.api.modelexpert import ModelExpert
from modelflock.api.routingpolicy import (
    ExpertReadiness,
    GatewaySpec,
    RoutingPolicy,
    RoutingPolicyStatus,
)
from modelflock.render.checks import parameter_count
from modelflock.render.classifier_health import Problem
from modelflock.render.evaluation import render_evaluation
from modelflock.render.examples import LoadedExamples
from modelflock.render.expert import ExpertRef, service_endpoint
from modelflock.render.knowledgebase import table_of
from modelflock.retrieval.store import CREDENTIAL_KEYS

CONFIG_KEY = "router.yaml"
GATEWAY_CONFIG_KEY = "gateway.yaml"  # the same config, for the gateway: listen, client keys
CLIENT_KEYS_DIR = "/etc/modelflock/client-keys"
SECRETS_DIR = "/etc/modelflock/secrets"
TOKEN_PATH = "/etc/modelflock/token/token"
CONFIG_DIR = "/etc/modelflock/router"


def config_map_name(policy: str) -> str:
    return f"{policy}-router-config"


def token_secret_name(policy: str) -> str:
    return f"{policy}-router-token"


def secret_file(secret: str, key: str) -> str:
    """Where the sidecar/gateway mounts a referenced Secret key."""
    return f"{SECRETS_DIR}/{secret}/{key}"


def client_key_file(secret: str, key: str) -> str:
    """Where the gateway mounts a client key's Secret key."""
    return f"{CLIENT_KEYS_DIR}/{secret}/{key}"


def client_key_secrets(gateway: GatewaySpec) -> list[tuple[str, str]]:
    """(secret, key) pairs of the gateway's client keys, sorted, unique."""
    return sorted({(k.secret_ref.name, k.secret_ref.key) for k in gateway.api_keys})


def render_gateway_config(config: Mapping[str, Any], gateway: GatewaySpec) -> dict[str, Any]:
    """The router config of the policy's gateway: the sidecars' config, listening on the pod IP
    and, with apiKeys, requiring one of them from every client."""
    rendered = {**config, "listen": {"host": "0.0.0.0", "port": gateway.port}}
    if gateway.api_keys:
        rendered["auth"] = {
            "keys": [
                {"name": k.name, "file": client_key_file(k.secret_ref.name, k.secret_ref.key)}
                for k in gateway.api_keys
            ]
        }
    return rendered


def cold_start_seconds(expert: ModelExpert) -> float:
    """Rough load time from the size hint: weights stream at ~1 GiB/s plus engine start-up."""
    if expert.spec.model is None or expert.spec.model.parameters is None:
        return 60.0
    billions = parameter_count(expert.spec.model.parameters) / 1e9
    return float(round(30 + billions * 4))


def expert_entry(
    name: str, expert: ModelExpert | None, namespace: str, domain: str
) -> dict[str, Any]:
    if expert is None:
        # Named but not created yet: point at the Service it will get; the router treats it as
        # failing until then, and the policy's ResolvedRefs condition says so.
        ref = ExpertRef(name=name, namespace=namespace, uid="")
        return {
            "name": name,
            "engine": "vllm",
            "urls": [service_endpoint(ref, domain)],
            "model": name,
        }
    spec = expert.spec
    entry: dict[str, Any] = {"name": name, "engine": spec.engine, "tier": spec.tier}
    if spec.engine == "external":
        assert spec.external is not None
        entry["urls"] = [spec.external.base_url]
        entry["model"] = spec.external.model
        if spec.external.allow_plain_http:
            entry["allowPlainHttp"] = True
        key_ref = spec.external.api_key_secret_ref
        if key_ref is not None:
            entry["apiKeyFile"] = secret_file(key_ref.name, key_ref.key)
    else:
        entry["urls"] = [service_endpoint(ExpertRef(name, namespace, ""), domain)]
        entry["model"] = spec.served_model_name(name)
        entry["coldStartSeconds"] = cold_start_seconds(expert)
    if spec.capabilities:
        entry["capabilities"] = sorted(spec.capabilities)
    if spec.cost is not None:
        entry["prices"] = {
            "inputPerMillion": spec.cost.input_per_million,
            "outputPerMillion": spec.cost.output_per_million,
        }
    return entry


@dataclass(frozen=True)
class StoreReport:
    """A router's last word on a knowledge base's store (flock API POST .../retrieval)."""

    reachable: bool
    detail: str
    at: datetime


@dataclass(frozen=True)
class RouterSettings:
    """Operator-level facts the router config needs."""

    operator_url: str | None
    domain: str = "svc.cluster.local"


def knowledge_base_names(policy: RoutingPolicy) -> list[str]:
    """The KnowledgeBases the policy's routes name, sorted, unique."""
    return sorted({r.retrieval.knowledge_base for r in policy.spec.routes if r.retrieval})


def expert_names(
    policy: RoutingPolicy, knowledge_bases: Mapping[str, KnowledgeBase | None]
) -> list[str]:
    """The policy's experts, then the embedding experts of its knowledge bases."""
    names = list(policy.spec.experts)
    for kb in knowledge_bases.values():
        if kb is not None and kb.spec.embedding.expert not in names:
            names.append(kb.spec.embedding.expert)
    return names


def knowledge_base_entry(kb: KnowledgeBase) -> dict[str, Any]:
    store = kb.spec.store
    return {
        "name": kb.metadata.name,
        "secretDir": f"{SECRETS_DIR}/{store.read_only_secret}",
        "table": table_of(kb),
        "dimensions": kb.spec.embedding.dimensions,
        "expert": kb.spec.embedding.expert,
        "queryTimeoutMilliseconds": store.query_timeout_milliseconds,
        "efSearch": store.hnsw_ef_search,
    }


def knowledge_base_secrets(
    knowledge_bases: Mapping[str, KnowledgeBase | None],
) -> list[tuple[str, str]]:
    """(secret, key) pairs of the read-only store Secrets the router mounts."""
    return sorted(
        {
            (kb.spec.store.read_only_secret, key)
            for kb in knowledge_bases.values()
            if kb is not None
            for key in CREDENTIAL_KEYS
        }
    )


def can_embed(expert: ModelExpert | None) -> bool:
    return expert is not None and "embed" in expert.spec.capabilities


def stage_problems(
    policy: RoutingPolicy, experts: Mapping[str, ModelExpert | None]
) -> list[Problem]:
    """Classifier stages the router cannot run as written (left out of its config)."""
    problems = []
    for stage in policy.spec.classifier.stages:
        if stage.type != "embedding":
            continue
        expert = experts.get(str(stage.expert))
        if expert is None:
            problems.append(
                Problem(
                    "StageExpertNotFound",
                    f"embedding stage: ModelExpert {stage.expert} not found; the stage is left"
                    " out of the router config until it exists",
                )
            )
        elif not can_embed(expert):
            problems.append(
                Problem(
                    "StageExpertCannotEmbed",
                    f"embedding stage: ModelExpert {stage.expert} lacks the 'embed' capability"
                    " (it must serve /v1/embeddings); the stage is left out of the router config",
                )
            )
    return problems


def examples_problems(loaded: LoadedExamples) -> list[Problem]:
    problems = [
        Problem("ExamplesNotFound", f"examplesFrom: ConfigMap key {where} not found")
        for where in loaded.missing
    ]
    if loaded.problems:
        shown = "; ".join(loaded.problems[:3])
        more = len(loaded.problems) - 3
        problems.append(
            Problem(
                "InvalidExamples",
                f"examplesFrom: {shown}" + (f"; and {more} more" if more > 0 else ""),
            )
        )
    return problems


def _classifier_config(
    policy: RoutingPolicy,
    experts: Mapping[str, ModelExpert | None],
    examples: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    classifier = policy.spec.classifier.to_api()
    classifier.pop("examplesFrom", None)  # resolved here: the router reads no ConfigMaps
    by_intent: dict[str, list[str]] = {}
    for intent, text in examples:
        by_intent.setdefault(intent, []).append(text)
    for intent in classifier.get("intents", []):
        extra = by_intent.get(intent["name"], [])
        if extra:
            intent["examples"] = [*intent.get("examples", []), *extra]
    stages = [
        s
        for s in classifier.get("stages", [])
        if s["type"] != "embedding" or can_embed(experts.get(s["expert"]))
    ]
    classifier["stages"] = stages or [{"type": "rules"}]
    return classifier


def render_router_config(
    policy: RoutingPolicy,
    experts: Mapping[str, ModelExpert | None],
    settings: RouterSettings,
    knowledge_bases: Mapping[str, KnowledgeBase | None] | None = None,
    examples: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """`examples`: (intent, prompt) pairs from the policy's examplesFrom ConfigMaps."""
    spec = policy.spec
    namespace = str(policy.metadata.namespace)
    name = policy.metadata.name
    classifier = _classifier_config(policy, experts, examples)
    bases = knowledge_bases or {}
    routes = []
    for route in spec.routes:
        rendered = route.to_api()
        if route.retrieval and bases.get(route.retrieval.knowledge_base) is None:
            # Not there (yet): the route serves from its experts; the status says why.
            rendered.pop("retrieval")
        routes.append(rendered)
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": spec.sidecar.port},
        "models": ["auto", name],
        "experts": [
            expert_entry(e, experts.get(e), namespace, settings.domain)
            for e in expert_names(policy, bases)
        ],
        "classifier": classifier,
        "routes": routes,
        "defaults": spec.defaults.to_api(),
    }
    found = [kb for _, kb in sorted(bases.items()) if kb is not None]
    if found:
        config["knowledgeBases"] = [knowledge_base_entry(kb) for kb in found]
    if spec.baseline:
        config["baseline"] = spec.baseline
    evaluation = render_evaluation(spec)
    if evaluation is not None:
        config["evaluation"] = evaluation
    if settings.operator_url:
        config["discovery"] = {
            "url": settings.operator_url,
            "tokenFile": TOKEN_PATH,
            "namespace": namespace,
            "policy": name,
        }
        if settings.operator_url.startswith("http://"):
            # The operator's flock API is served over plain HTTP inside the cluster: the
            # operator's own configured URL is the opt-in to send the policy token over it.
            config["discovery"]["allowPlainHttp"] = True
    return config


def render_config_text(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=True, width=100, allow_unicode=True)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def referenced_secrets(experts: Mapping[str, ModelExpert | None]) -> list[tuple[str, str]]:
    """(secret, key) pairs the router must have mounted, sorted, unique."""
    found = set()
    for expert in experts.values():
        if expert is not None and expert.spec.external is not None:
            ref = expert.spec.external.api_key_secret_ref
            if ref is not None:
                found.add((ref.name, ref.key))
    return sorted(found)


def _expert_ready(expert: ModelExpert | None) -> bool:
    if expert is None or expert.status is None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in expert.status.conditions)


def _ready_replicas(expert: ModelExpert | None) -> int:
    if expert is None or expert.status is None:
        return 0
    return expert.status.ready_replicas or 0


def retrieval_condition(
    knowledge_bases: Mapping[str, KnowledgeBase | None], reports: Mapping[str, StoreReport]
) -> tuple[bool, str, str]:
    """(ok, reason, message) of the RetrievalReady condition: the knowledge bases exist and
    are Ready, and no router reports its store unreachable."""
    missing = sorted(n for n, kb in knowledge_bases.items() if kb is None)
    if missing:
        return (
            False,
            "KnowledgeBaseNotFound",
            (
                f"KnowledgeBases not found: {', '.join(missing)}; their routes are served by"
                " their experts"
            ),
        )
    for name, kb in sorted(knowledge_bases.items()):
        assert kb is not None
        ready = next(
            (c for c in (kb.status.conditions if kb.status else []) if c.type == "Ready"), None
        )
        if ready is None or ready.status != "True":
            reason = ready.reason if ready is not None else "NotIngested"
            detail = ready.message if ready is not None else "not ingested yet"
            return (
                False,
                reason,
                f"KnowledgeBase {name}: {detail}; requests fall through to the routes' experts",
            )
    down = sorted((n, r) for n, r in reports.items() if not r.reachable and n in knowledge_bases)
    if down:
        text = "; ".join(f"{n}: {r.detail} (since {r.at:%Y-%m-%dT%H:%M:%SZ})" for n, r in down)
        return (
            False,
            "StoreUnreachable",
            (
                f"routers report the store unreachable: {text}; requests fall through to the"
                " routes' experts"
            ),
        )
    return True, "StoreReachable", f"knowledge bases {', '.join(sorted(knowledge_bases))} ready"


def compute_policy_status(
    policy: RoutingPolicy,
    experts: Mapping[str, ModelExpert | None],
    config_name: str,
    digest: str,
    previous: RoutingPolicyStatus | None,
    now: datetime,
    knowledge_bases: Mapping[str, KnowledgeBase | None] | None = None,
    reports: Mapping[str, StoreReport] | None = None,
    classifier_problems: Sequence[Problem] = (),
) -> RoutingPolicyStatus:
    """`classifier_problems`: stage_problems, examples_problems and the routers' reports
    (classifier_health.report_problems), most important first."""
    spec = policy.spec
    generation = int(policy.metadata.generation or 0)
    readiness = [
        ExpertReadiness(
            name=name,
            found=experts.get(name) is not None,
            ready=_expert_ready(experts.get(name)),
            ready_replicas=_ready_replicas(experts.get(name)),
        )
        for name in spec.experts
    ]
    missing = [r.name for r in readiness if not r.found]
    ready_names = {r.name for r in readiness if r.ready}
    conditions = list(previous.conditions if previous else [])
    conditions = set_condition(
        conditions,
        type="ResolvedRefs",
        status="False" if missing else "True",
        reason="ExpertNotFound" if missing else "AllExpertsFound",
        message=f"missing ModelExperts: {', '.join(missing)}" if missing else "",
        observed_generation=generation,
        now=now,
    )
    unserved = [
        route.name
        for route in spec.routes
        if not ready_names.intersection(
            (route.cascade.experts if route.cascade else [route.expert or ""]) + route.fallbacks
        )
    ]
    conditions = set_condition(
        conditions,
        type="Ready",
        status="False" if unserved else "True",
        reason="RouteWithoutReadyExpert" if unserved else "ConfigRendered",
        message=(
            f"no ready expert for routes: {', '.join(unserved)}"
            if unserved
            else f"router config {config_name} rendered; every route has a ready expert"
        ),
        observed_generation=generation,
        now=now,
    )
    if knowledge_bases:
        ok, reason, message = retrieval_condition(knowledge_bases, reports or {})
        conditions = set_condition(
            conditions,
            type="RetrievalReady",
            status="True" if ok else "False",
            reason=reason,
            message=message[:2048],
            observed_generation=generation,
            now=now,
        )
    else:
        conditions = remove_condition(conditions, "RetrievalReady")
    first = classifier_problems[0] if classifier_problems else None
    conditions = set_condition(
        conditions,
        type="ClassifierDegraded",
        status="True" if first else "False",
        reason=first.reason if first else "StagesAnswering",
        message=(
            "; ".join(p.message for p in classifier_problems)[:2000]
            if first
            else "every classifier stage can run and routers report no stage failures"
        ),
        observed_generation=generation,
        now=now,
    )
    return RoutingPolicyStatus(
        observed_generation=generation,
        conditions=conditions,
        experts=readiness,
        experts_ready=f"{len(ready_names)}/{len(spec.experts)}",
        config_map_name=config_name,
        config_hash=digest,
    )
