"""The chart against the real control plane: its rendered manifests pass server-side dry-run,
the plain and kustomize manifests too, and `helm install` / `upgrade` / `uninstall` work.

The Prometheus Operator and cert-manager are not installed in the test cluster, so this module
applies their own CRDs for the kinds the chart uses from them (ServiceMonitor, PodMonitor,
PrometheusRule, Certificate, Issuer), vendored unchanged and pinned by version in
tests/data/upstream-crds/ (see its README): the dry-run validates those specs against the
upstream OpenAPI schemas, as a cluster with those operators would.

Nothing here makes the API server call the sidecar webhook (it would dial a ClusterIP): no pod
carrying the modelflock.io/routing-policy label is created while a release is installed, and
every release is uninstalled before the test ends.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import LocalCluster

from docpath import doc_steps, run_step, shell_env

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelflock"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
OUR_CRDS = (
    "modelexperts.modelflock.io",
    "routingpolicies.modelflock.io",
    "knowledgebases.modelflock.io",
)
UPSTREAM_CRDS = REPO / "tests" / "data" / "upstream-crds"
# The third-party kinds the chart can render: (group, plural) of each upstream CRD.
THIRD_PARTY = (
    ("monitoring.coreos.com", "servicemonitors"),
    ("monitoring.coreos.com", "podmonitors"),
    ("monitoring.coreos.com", "prometheusrules"),
    ("cert-manager.io", "certificates"),
    ("cert-manager.io", "issuers"),
)


def upstream_crd_files() -> list[Path]:
    files = [UPSTREAM_CRDS / f"{group}_{plural}.yaml" for group, plural in THIRD_PARTY]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"vendored upstream CRDs missing: {missing}"
    return files


class Helm:
    def __init__(self, cluster: LocalCluster, home: Path) -> None:
        assert cluster.bin_dir is not None
        self.binary = cluster.bin_dir / "helm"
        if not self.binary.exists():
            pytest.fail(f"{self.binary} missing: run tests/cluster/build.sh", pytrace=False)
        self.env = {
            **cluster.env(),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=180
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
        return result

    def template(self, release: str, namespace: str, *extra: str) -> str:
        return self(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            "v1.36.3",
            *extra,
        ).stdout


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def third_party_crds(cluster: LocalCluster) -> Iterator[None]:
    files = upstream_crd_files()
    names = [f"{plural}.{group}" for group, plural in THIRD_PARTY]
    # Server-side: the upstream CRDs are too large for client-side apply's annotation.
    cluster.kubectl("apply", "--server-side", *[a for f in files for a in ("-f", str(f))])
    # A CRD's status appears a moment after it is created: wait for it to exist first.
    deadline = time.monotonic() + 60
    while cluster.run_kubectl(
        "wait", "--for=condition=Established", "--timeout=10s", *[f"crd/{n}" for n in names]
    ).returncode:
        assert time.monotonic() < deadline, "third-party CRDs not established"
        time.sleep(1)
    yield
    cluster.kubectl("delete", "crd", "--ignore-not-found", "--wait=false", *names)


def namespace(cluster: LocalCluster, name: str) -> None:
    out = cluster.kubectl("get", "namespace", name, "--ignore-not-found", "-o", "name")
    if not out.strip():
        cluster.kubectl("create", "namespace", name)


def dry_run(cluster: LocalCluster, manifests: str) -> str:
    """Server-side dry-run of every document; returns kubectl's report. Server-side apply,
    because the CRDs are too large for client-side apply's last-applied annotation."""
    return cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-o",
        "name",
        "-f",
        "-",
        input=manifests,
    )


def objects(manifests: str) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(manifests) if d)


def dry_run_names(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.strip()]


def test_default_values_pass_server_dry_run(cluster: LocalCluster, helm: Helm) -> None:
    namespace(cluster, "chart-default")
    manifests = helm.template("modelflock", "chart-default")
    report = dry_run(cluster, manifests)
    # 3 CRDs, RBAC (ClusterRole, its binding, the Lease Role and its binding), ServiceAccount,
    # ConfigMap, Deployment, PodDisruptionBudget, Service, webhook + its Secret, helm-test Pod.
    assert len(dry_run_names(report)) == len(objects(manifests)) == 15
    assert "deployment.apps/modelflock" in report
    assert "poddisruptionbudget.policy/modelflock" in report
    assert "role.rbac.authorization.k8s.io/modelflock-leader-election" in report
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/modelflock" in report


def test_full_values_pass_server_dry_run(
    cluster: LocalCluster, helm: Helm, third_party_crds: None
) -> None:
    namespace(cluster, "chart-full")
    # The full values name a pull secret and a priority class; both are references, not
    # objects the chart creates, so the dry-run needs nothing for them.
    manifests = helm.template("flock", "chart-full", "-f", str(FULL_VALUES))
    report = dry_run(cluster, manifests)
    # The default 15 plus the dashboard, cert-manager Certificate and Issuer, ServiceMonitor,
    # PodMonitor and PrometheusRule, less the webhook Secret cert-manager now makes.
    assert len(dry_run_names(report)) == len(objects(manifests)) == 20
    for kind in ("servicemonitor", "podmonitor", "prometheusrule", "certificate", "issuer"):
        assert f"{kind}." in report, kind


def test_upstream_crds_validate_specs(cluster: LocalCluster, third_party_crds: None) -> None:
    """The vendored CRDs really check specs (a stub that accepts anything would not)."""
    namespace(cluster, "chart-full")
    bad = [  # (document, the field the refusal must name)
        (
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "ServiceMonitor",
                "metadata": {"name": "bad", "namespace": "chart-full"},
                "spec": {"selector": {}, "endpoints": [{"port": "metrics", "honorLabels": "yes"}]},
            },
            "honorLabels",
        ),
        (
            {
                "apiVersion": "cert-manager.io/v1",
                "kind": "Certificate",
                "metadata": {"name": "bad", "namespace": "chart-full"},
                "spec": {"dnsNames": ["x"], "issuerRef": {"name": "i"}},  # no secretName
            },
            "secretName",
        ),
    ]
    for doc, field in bad:
        result = cluster.run_kubectl(
            "apply", "--server-side", "--dry-run=server", "-f", "-", input=json.dumps(doc)
        )
        assert result.returncode != 0, f"{doc['kind']} with a bad spec was accepted"
        assert field in result.stderr, result.stderr


def test_plain_manifests_and_kustomize_pass_server_dry_run(
    cluster: LocalCluster, third_party_crds: None
) -> None:
    plain = (REPO / "deploy" / "manifests" / "modelflock.yaml").read_text()
    base = cluster.kubectl("kustomize", str(REPO / "deploy" / "kustomize" / "base"))
    assert objects(base) == objects(plain)
    overlay = cluster.kubectl(
        "kustomize", str(REPO / "deploy" / "kustomize" / "overlays" / "example")
    )
    [config] = [
        d
        for d in yaml.safe_load_all(overlay)
        if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "modelflock-config"
    ]
    assert "h100" in config["data"]["config.yaml"]
    # The Namespace document is itself only dry-run, so create it for the namespaced objects.
    namespace(cluster, "modelflock")
    for manifests in (plain, overlay):
        report = dry_run(cluster, manifests)
        assert len(dry_run_names(report)) == len(objects(manifests))


def crd_ownership(cluster: LocalCluster, release: str, ns: str) -> None:
    """Lets the release adopt the CRDs the session fixture applied from crds/ (Helm refuses
    to take over objects without its ownership metadata); `None` release removes it again."""
    for name in OUR_CRDS:
        cluster.kubectl(
            "annotate",
            "--overwrite",
            f"crd/{name}",
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={ns}",
        )
        cluster.kubectl("label", "--overwrite", f"crd/{name}", "app.kubernetes.io/managed-by=Helm")


def crd_disown(cluster: LocalCluster) -> None:
    for name in OUR_CRDS:
        cluster.kubectl(
            "annotate",
            f"crd/{name}",
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
            "helm.sh/resource-policy-",
            check=False,
        )
        cluster.kubectl("label", f"crd/{name}", "app.kubernetes.io/managed-by-", check=False)


def get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json"))
    return data


def test_helm_install_upgrade_uninstall(cluster: LocalCluster, helm: Helm) -> None:
    release, ns = "mf", "chart-install"
    crd_ownership(cluster, release, ns)
    try:
        helm("install", release, str(CHART), "--namespace", ns, "--create-namespace")
        deployment = get(cluster, "-n", ns, "deployment", "mf-modelflock")
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        # The CRDs now belong to the release, with the keep policy.
        crd = get(cluster, "crd", OUR_CRDS[0])
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # The webhook's caBundle is the CA in the Secret the operator mounts.
        secret = get(cluster, "-n", ns, "secret", "mf-modelflock-webhook-tls")
        webhook = get(cluster, "mutatingwebhookconfiguration", "mf-modelflock")
        [hook] = webhook["webhooks"]
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert hook["failurePolicy"] == "Ignore"
        assert base64.b64decode(secret["data"]["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE")

        # An upgrade keeps the certificate (lookup) instead of generating a new one.
        helm(
            "upgrade",
            release,
            str(CHART),
            "--namespace",
            ns,
            "--reuse-values",
            "--set",
            "resyncSeconds=45",
        )
        after = get(cluster, "-n", ns, "secret", "mf-modelflock-webhook-tls")
        assert after["data"] == secret["data"]
        [hook] = get(cluster, "mutatingwebhookconfiguration", "mf-modelflock")["webhooks"]
        assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        config = get(cluster, "-n", ns, "configmap", "mf-modelflock-config")
        assert yaml.safe_load(config["data"]["config.yaml"])["resyncSeconds"] == 45

        status = helm("status", release, "--namespace", ns).stdout
        assert "STATUS: deployed" in status and "kubectl -n llm get modelflock" in status
    finally:
        uninstall = helm("uninstall", release, "--namespace", ns, "--wait", check=False)
        crd_disown(cluster)
        cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")
    assert uninstall.returncode == 0, uninstall.stderr
    assert "kept due to the resource policy" in uninstall.stdout + uninstall.stderr
    # The CRDs (and so every ModelExpert and RoutingPolicy) survive the uninstall.
    for name in OUR_CRDS:
        assert get(cluster, "crd", name)["metadata"]["name"] == name
    leftover = cluster.kubectl(
        "get", "mutatingwebhookconfiguration", "mf-modelflock", "--ignore-not-found", "-o", "name"
    )
    assert not leftover.strip()


def test_existing_crds_as_the_docs_say(cluster: LocalCluster, tmp_path: Path) -> None:
    """docs/install.md, "When the CRDs already exist", run as written: the CRDs applied from
    crds/ (as the session did) make a plain install fail; `crds.enabled=false` installs
    without them, and the adoption commands let the release take them over."""
    steps = doc_steps("crds-step")
    checkout = tmp_path / "checkout"
    shutil.copytree(CHART, checkout / "charts" / "modelflock")
    (checkout / "my-values.yaml").write_text("nodePools: []\n")
    assert cluster.bin_dir is not None
    env = shell_env(cluster.bin_dir, cluster.kubeconfig, tmp_path)

    def helm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["helm", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=180
        )

    plain = helm_cli(
        "install",
        "modelflock",
        "charts/modelflock",
        "-n",
        "modelflock",
        "--create-namespace",
        "-f",
        "my-values.yaml",
    )
    assert plain.returncode != 0
    assert "invalid ownership metadata" in plain.stderr, plain.stderr
    try:
        run_step(steps["disabled"], checkout, env)
        crd = get(cluster, "crd", OUR_CRDS[0])
        assert "meta.helm.sh/release-name" not in crd["metadata"].get("annotations", {})
        uninstall = helm_cli("uninstall", "modelflock", "-n", "modelflock", "--wait")
        assert uninstall.returncode == 0, uninstall.stderr
        assert get(cluster, "crd", OUR_CRDS[0])  # not the release's: untouched

        run_step(steps["adopt"], checkout, env)
        for name in OUR_CRDS:
            annotations = get(cluster, "crd", name)["metadata"]["annotations"]
            assert annotations["meta.helm.sh/release-name"] == "modelflock"
            assert annotations["helm.sh/resource-policy"] == "keep"  # now the chart's
    finally:
        helm_cli("uninstall", "modelflock", "-n", "modelflock", "--wait")
        crd_disown(cluster)
    for name in OUR_CRDS:
        assert get(cluster, "crd", name)["metadata"]["name"] == name  # kept
