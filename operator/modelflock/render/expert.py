"""ModelExpert → Deployment and Service: pure functions, no I/O.

The output is deterministic (sorted, no timestamps), so applying it again changes nothing and
the pod template hash moves only when the pod template itself changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelflock.api.modelexpert import ModelExpertSpec, Toleration
from modelflock.operator_config import NodePool, OperatorConfig

Manifest = dict[str, Any]

EXPERT_LABEL = "modelflock.io/expert"
COMPONENT_ENGINE = "engine"
MANAGED_BY = "modelflock"
SERVICE_PORT = 8000
ENGINE_PORTS = {"vllm": 8000, "tgi": 8080}
CACHE_PATH = "/data"
# vLLM and TGI name quantization methods differently; int4/int8 have no single flag.
VLLM_QUANTIZATION = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bitsandbytes": "bitsandbytes"}
TGI_QUANTIZATION = {
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "bitsandbytes": "bitsandbytes",
    "eetq": "eetq",
    "int8": "eetq",
    "int4": "bitsandbytes-nf4",
}


@dataclass(frozen=True)
class ExpertRef:
    """Identity of the expert the children belong to (for names and owner references)."""

    name: str
    namespace: str
    uid: str


def labels(ref: ExpertRef, spec: ModelExpertSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": spec.engine,
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/component": COMPONENT_ENGINE,
        "app.kubernetes.io/part-of": "modelflock",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        EXPERT_LABEL: ref.name,
        "modelflock.io/tier": spec.tier,
    }


def selector_labels(ref: ExpertRef) -> dict[str, str]:
    return {EXPERT_LABEL: ref.name, "app.kubernetes.io/component": COMPONENT_ENGINE}


def selector_string(ref: ExpertRef) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(ref).items()))


def owner_reference(ref: ExpertRef) -> dict[str, Any]:
    return {
        "apiVersion": "modelflock.io/v1alpha1",
        "kind": "ModelExpert",
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def service_endpoint(ref: ExpertRef, domain: str = "svc.cluster.local") -> str:
    return f"http://{ref.name}.{ref.namespace}.{domain}:{SERVICE_PORT}/v1"


def engine_port(spec: ModelExpertSpec) -> int:
    return ENGINE_PORTS.get(spec.engine, SERVICE_PORT)


def _parameters_billions(text: str) -> float:
    value = float(text[:-1])
    return value / 1000 if text.endswith("M") else value


def startup_failure_threshold(spec: ModelExpertSpec) -> int:
    """Probes every 10 s; big models get long enough to download and load (70B: 30 min)."""
    size = (
        _parameters_billions(spec.model.parameters) if spec.model and spec.model.parameters else 8
    )
    minutes = 10 if size <= 15 else 20 if size <= 40 else 30
    return minutes * 6


def _vllm_args(name: str, spec: ModelExpertSpec) -> list[str]:
    assert spec.model is not None and spec.model.name is not None
    model = spec.model
    args = [
        f"--model={model.name}",
        f"--served-model-name={spec.served_model_name(name)}",
        f"--port={ENGINE_PORTS['vllm']}",
    ]
    if model.revision:
        args.append(f"--revision={model.revision}")
    if spec.resources.gpus > 1:
        args.append(f"--tensor-parallel-size={spec.resources.gpus}")
    if model.max_context_length:
        args.append(f"--max-model-len={model.max_context_length}")
    if model.quantization in VLLM_QUANTIZATION:
        args.append(f"--quantization={VLLM_QUANTIZATION[model.quantization]}")
    if model.adapters:
        args += ["--enable-lora", f"--max-loras={len(model.adapters)}", "--lora-modules"]
        args += [f"{a.name}={a.source}" for a in model.adapters]
    return args + list(spec.engine_args)


def _tgi_args(spec: ModelExpertSpec) -> list[str]:
    assert spec.model is not None and spec.model.name is not None
    model = spec.model
    args = [f"--model-id={model.name}", f"--port={ENGINE_PORTS['tgi']}"]
    if model.revision:
        args.append(f"--revision={model.revision}")
    if spec.resources.gpus > 1:
        args.append(f"--num-shard={spec.resources.gpus}")
    if model.max_context_length:
        args.append(f"--max-total-tokens={model.max_context_length}")
    if model.quantization in TGI_QUANTIZATION:
        args.append(f"--quantize={TGI_QUANTIZATION[model.quantization]}")
    return args + list(spec.engine_args)


def _env(spec: ModelExpertSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if spec.model is not None and spec.model.token_secret_ref is not None:
        ref = spec.model.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if spec.cache is not None:
        env.append({"name": "HF_HOME", "value": CACHE_PATH})
    for item in spec.env:
        if item.secret_key_ref is not None:
            ref = item.secret_key_ref
            env.append(
                {
                    "name": item.name,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        else:
            env.append({"name": item.name, "value": item.value or ""})
    return env


def _volumes(spec: ModelExpertSpec) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    if spec.resources.gpus > 1:
        # Tensor parallelism exchanges tensors through shared memory; the default 64 MiB is too small.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if spec.cache is not None:
        if spec.cache.type == "pvc":
            volumes.append(
                {"name": "weights", "persistentVolumeClaim": {"claimName": spec.cache.claim_name}}
            )
        else:
            empty: dict[str, str] = {}
            if spec.cache.size_limit:
                empty["sizeLimit"] = spec.cache.size_limit
            volumes.append({"name": "weights", "emptyDir": empty})
        mounts.append({"name": "weights", "mountPath": CACHE_PATH})
    return volumes, mounts


def _resources(spec: ModelExpertSpec, pool: NodePool | None) -> Manifest:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if spec.resources.gpus > 0:
        resource = pool.gpu_resource_name if pool is not None else "nvidia.com/gpu"
        limits[resource] = spec.resources.gpus
    for key, value in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
        if value is not None:
            requests[key] = value
            limits[key] = value
    result: Manifest = {}
    if limits:
        result["limits"] = limits
    if requests:
        result["requests"] = requests
    return result


def _tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    unique: list[dict[str, Any]] = []
    for item in items:
        rendered = item.to_api()
        if rendered not in unique:
            unique.append(rendered)
    return unique


def _probe(path: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def render_pod_spec(ref: ExpertRef, spec: ModelExpertSpec, config: OperatorConfig) -> Manifest:
    pool = config.pool(spec.node_pool)
    volumes, mounts = _volumes(spec)
    image = spec.image or (config.images.vllm if spec.engine == "vllm" else config.images.tgi)
    args = _vllm_args(ref.name, spec) if spec.engine == "vllm" else _tgi_args(spec)
    container: Manifest = {
        "name": "engine",
        "image": image,
        "args": args,
        "ports": [{"name": "http", "containerPort": engine_port(spec), "protocol": "TCP"}],
        "startupProbe": _probe("/health", 10, startup_failure_threshold(spec)),
        "readinessProbe": _probe("/health", 5, 3),
        "livenessProbe": _probe("/health", 15, 6),
        # Engine images run as root and write caches; everything else is restricted.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    env = _env(spec)
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    resources = _resources(spec, pool)
    if resources:
        container["resources"] = resources

    node_selector = dict(pool.node_selector) if pool is not None else {}
    tolerations = list(pool.tolerations) if pool is not None else []
    pod: Manifest = {"containers": [container], "enableServiceLinks": False}
    placement = spec.placement
    if placement is not None:
        node_selector.update(placement.node_selector)
        tolerations += placement.tolerations
        if placement.affinity:
            pod["affinity"] = placement.affinity
        if placement.priority_class_name:
            pod["priorityClassName"] = placement.priority_class_name
        if placement.runtime_class_name:
            pod["runtimeClassName"] = placement.runtime_class_name
    if node_selector:
        pod["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        pod["tolerations"] = _tolerations(tolerations)
    if volumes:
        pod["volumes"] = volumes
    # Let in-flight generations finish on scale-down.
    pod["terminationGracePeriodSeconds"] = 60
    return pod


def render_deployment(
    ref: ExpertRef, spec: ModelExpertSpec, config: OperatorConfig, replicas: int
) -> Manifest:
    pod_labels = labels(ref, spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": pod_labels,
            "ownerReferences": [owner_reference(ref)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(ref)},
            # Never drop below the desired ready capacity during a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(engine_port(spec)),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": render_pod_spec(ref, spec, config),
            },
        },
    }


def render_service(ref: ExpertRef, spec: ModelExpertSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": labels(ref, spec),
            "ownerReferences": [owner_reference(ref)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ref),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
