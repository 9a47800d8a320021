"""The Helm chart, rendered by the real Helm engine and validated against the Kubernetes schemas.

What `helm install` would send to the API server for the default values, each values file and
`--set` combinations: strict schema validation for every supported Kubernetes version, strict
lint, and the behaviour operators rely on (replicas, GPU toggles, storage, labels, security,
RBAC scope, schema rejections), the dashboard's token and API settings, and the Grafana
dashboard over the metrics the workers export.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

from fraudpipe.config import ConfigError, load_settings
from fraudpipe.dashboard.guard import allowed_hosts, host_allowed
from fraudpipe.metrics import Metrics
from tests.chart import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    ROOT,
    Rendered,
    deep_merge,
    render,
    values_from,
)

# Every case is `helm install -f FILES --set SETS`.
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "defaults": ((), ()),
    "kind": (("values-kind.yaml",), ()),
    "gpu": (("values-gpu.yaml",), ()),
    "gpu-runtimeclass": (("values-gpu.yaml",), ("gpu.runtimeClassName=nvidia",)),
    "infer-replicas": ((), ("stages.infer.replicas=5",)),
    "infer-on-gpu": ((), ("stages.infer.device=gpu,stages.infer.gpus=2",)),
    "dashboard": (
        (),
        ("stages.dashboard.enabled=true,dashboard.service.type=NodePort,dashboard.port=8081",),
    ),
    "no-dashboard": ((), ("stages.dashboard.enabled=false",)),
    "dashboard-token": ((), ("--set-string dashboard.token=s3cret-token",)),
    "dashboard-existing-secret": ((), ("dashboard.existingSecret=my-dashboard-token",)),
    "grafana": (
        (),
        (
            "grafana.dashboard.enabled=true,grafana.dashboard.namespace=monitoring",
            "--set-string grafana.dashboard.annotations.grafana_folder=Fraud",
        ),
    ),
    "existing-claim": ((), ("persistence.existingClaim=shared-flashblade",)),
    "rwo-no-class": ((), ("persistence.accessMode=ReadWriteOnce,persistence.storageClass=-",)),
    "no-persistence": ((), ("persistence.enabled=false",)),
    "monitoring": ((), ("metrics.serviceMonitor.enabled=true,podDisruptionBudget.enabled=true",)),
    "paused-train": ((), ("stages.train.replicas=0,stages.gather.enabled=false",)),
    "extras": (
        ("values-kind.yaml",),
        (
            "--set-string stages.infer.extraEnv[0].name=FRAUDPIPE_INFER__THREADS,"
            "stages.infer.extraEnv[0].value=2",
            "stages.preprocess.tolerations[0].key=dedicated,"
            "stages.preprocess.tolerations[0].operator=Exists",
            "stages.train.probes.liveness.failureThreshold=20,fullnameOverride=fraud",
            "config.gather.rate=500",
            "--set-json config.infer.threshold=0.7",
        ),
    ),
    "cpu-limits": (
        (),
        (
            "stages.infer.resources.limits.cpu=2,stages.infer.device=gpu",
            "--set-string stages.train.resources.limits.cpu=1500m",
        ),
    ),
    "network-peers": (
        (),
        (
            "--set-json networkPolicy.metrics.from="
            '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]',
            "--set-json networkPolicy.dashboard.from="
            '[{"ipBlock":{"cidr":"10.0.0.0/8","except":["10.9.0.0/16"]}}]',
        ),
    ),
    "no-network-policy": ((), ("networkPolicy.enabled=false",)),
    "only-dashboard": (
        (),
        (
            "stages.gather.enabled=false,stages.preprocess.enabled=false,"
            "stages.train.enabled=false,stages.infer.enabled=false",
        ),
    ),
    "dashboard-hosts": ((), ("dashboard.allowedHosts={fraud.example.com,.corp.example}",)),
}
# The chart's own examples (chart/ci/, the chart-testing convention): every test over CASES
# renders, lints and validates them too.
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES.update({f"ci/{p.name}": ((str(p.relative_to(ROOT)),), ()) for p in CI_VALUES})
# What a cluster with the Prometheus operator serves (for the gated ServiceMonitor).
WITH_OPERATOR = ("monitoring.coreos.com/v1", "policy/v1", "apps/v1", "v1")
# apiVersion/kind pairs the chart may emit: GA APIs served by every supported version.
ALLOWED_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Pod"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}


def case(name: str, **kw: Any) -> Rendered:
    files, sets = CASES[name]
    if name.startswith("ci/"):  # the examples are for clusters that serve what they use
        kw.setdefault("api_versions", KEDA_API)
    return render(values_from(files, sets), **kw)


def _values(files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> dict[str, Any]:
    return values_from(files, sets)


DASHBOARD_SECRET = "fp-fraudpipe-dashboard"


def _without_random_token(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents with the dashboard Secret's token blanked: without dashboard.token each
    render draws a new one (a real upgrade keeps the installed one through `lookup`)."""
    return [
        {**d, "data": {"token": "<random>"}}
        if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-dashboard")
        else d
        for d in docs
    ]


def _container(rendered: Rendered, stage: str) -> dict[str, Any]:
    (container,) = rendered.deployments()[stage]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# -- every document is valid Kubernetes --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_document_validates_strictly_on_every_supported_version(name: str) -> None:
    rendered = case(name, api_versions=KEDA_API)
    assert rendered.kind("Deployment")
    keda = jsonschema.Draft7Validator(_scaled_object_schema())
    for doc in rendered.docs:
        assert (doc["apiVersion"], doc["kind"]) in ALLOWED_KINDS, doc["kind"]
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: no schema in kubernetes-validate; checked in its own test
        if doc["kind"] == "ScaledObject":  # a CRD: KEDA's own published schema
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in keda.iter_errors(doc)]
            assert not errors, errors
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} invalid on {version}: {exc.message}"
                )


@pytest.mark.parametrize("files", [(), ("values-kind.yaml",), ("values-gpu.yaml",)])
def test_lint_strict_is_clean(files: tuple[str, ...]) -> None:
    report = helm_python.lint(CHART, _values(files), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error (strict lint fails on both); 1 = info ("icon").
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_files_install_what_they_say() -> None:
    kind = case("kind")
    assert {d["metadata"]["labels"]["fraudpipe.io/device"] for d in kind.kind("Deployment")} == {
        "cpu"
    }
    for pod in kind.pod_specs():
        assert pod["containers"][0]["imagePullPolicy"] == "Never"
    (pvc,) = kind.kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["storageClassName"] == "standard"

    gpu = case("gpu")
    (pvc,) = gpu.kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "pure-file"


# -- replicas and GPU toggles -------------------------------------------------------------------


def test_set_replicas_changes_only_that_deployment() -> None:
    before = _without_random_token(case("defaults").docs)
    after = _without_random_token(case("infer-replicas").docs)
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1, [b["metadata"]["name"] for b, _ in changed]
    b, a = changed[0]
    assert a["kind"] == "Deployment" and a["metadata"]["name"] == "fp-fraudpipe-infer"
    assert (b["spec"]["replicas"], a["spec"]["replicas"]) == (1, 5)
    a["spec"]["replicas"] = 1
    assert a == b, "something besides spec.replicas changed"


def _gpu_request(deployment: dict[str, Any]) -> Any:
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    return limits.get("nvidia.com/gpu")


def test_gpu_stages_request_gpus_and_cpu_stages_do_not() -> None:
    for name in CASES:
        for stage, dep in case(name).deployments().items():
            device = dep["metadata"]["labels"]["fraudpipe.io/device"]
            pod = dep["spec"]["template"]["spec"]
            image = pod["containers"][0]["image"]
            if device == "gpu":
                assert _gpu_request(dep) is not None, (name, stage)
                assert image.endswith("-gpu"), (name, stage, image)
                assert "--device=gpu" in pod["containers"][0]["args"]
            else:
                assert _gpu_request(dep) is None, (name, stage)
                assert not image.endswith("-gpu"), (name, stage, image)
                assert "--device=cpu" in pod["containers"][0]["args"]
                assert "runtimeClassName" not in pod

    gpu = case("gpu-runtimeclass").deployments()
    assert {s for s, d in gpu.items() if _gpu_request(d)} == {"preprocess", "infer"}
    for stage in ("preprocess", "infer"):
        pod = gpu[stage]["spec"]["template"]["spec"]
        assert _gpu_request(gpu[stage]) == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert pod["runtimeClassName"] == "nvidia"
        # The CPU memory request is kept alongside the GPU limit.
        assert pod["containers"][0]["resources"]["requests"]["memory"]
        # No rollout may need a second GPU while the old pod still holds one.
        assert gpu[stage]["spec"]["strategy"]["type"] in ("Recreate", "RollingUpdate")
        assert gpu[stage]["spec"]["strategy"].get("rollingUpdate", {}).get("maxSurge", 0) == 0
    for stage in ("gather", "train"):
        pod = gpu[stage]["spec"]["template"]["spec"]
        assert "nodeSelector" not in pod and "tolerations" not in pod, stage
    assert "GPU stages (infer, preprocess) request nvidia.com/gpu" in case("gpu").notes
    assert "GPU stages" not in case("defaults").notes
    # Whatever stops a worker starting (a GPU it cannot see) is the pod's termination message.
    for dep in gpu.values():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    one = case("infer-on-gpu").deployments()
    assert {s for s, d in one.items() if _gpu_request(d)} == {"infer"}
    assert _gpu_request(one["infer"]) == 2
    assert one["infer"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "fraudpipe:0.1.0-gpu"
    )


# -- storage ------------------------------------------------------------------------------------


def _data_volume(pod: dict[str, Any]) -> dict[str, Any]:
    (vol,) = [v for v in pod["volumes"] if v["name"] == "data"]
    return vol


def test_every_pod_mounts_the_one_shared_claim() -> None:
    rendered = case("defaults")
    (pvc,) = rendered.kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class
    for pod in rendered.pod_specs():
        assert _data_volume(pod) == {
            "name": "data",
            "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
        }
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data"]
        assert mount["mountPath"] == "/mnt/flashblade"


def test_existing_claim_is_used_and_no_claim_is_created() -> None:
    rendered = case("existing-claim")
    assert rendered.kind("PersistentVolumeClaim") == []
    for pod in rendered.pod_specs():
        assert _data_volume(pod)["persistentVolumeClaim"]["claimName"] == "shared-flashblade"
    assert "existing claim shared-flashblade" in rendered.notes


def test_rwo_claim_without_class_and_the_test_pod_follows_the_stages() -> None:
    rendered = case("rwo-no-class")
    (pvc,) = rendered.kind("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["storageClassName"] == ""  # "-": bind a pre-created PV
    (test_pod,) = rendered.kind("Pod")
    term = test_pod["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term[0]["topologyKey"] == "kubernetes.io/hostname"
    (rwx_test_pod,) = case("defaults").kind("Pod")
    assert "affinity" not in rwx_test_pod["spec"]


def test_without_persistence_pods_get_empty_dirs_and_a_warning() -> None:
    rendered = case("no-persistence")
    assert rendered.kind("PersistentVolumeClaim") == []
    for pod in rendered.pod_specs():
        assert _data_volume(pod) == {"name": "data", "emptyDir": {}}
    assert "WARNING: persistence is off" in rendered.notes


# -- labels, selectors, services ----------------------------------------------------------------

STANDARD = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def test_standard_labels_and_stable_selectors() -> None:
    rendered = case("dashboard", api_versions=WITH_OPERATOR)
    for doc in rendered.docs:
        labels = doc["metadata"]["labels"]
        assert all(k in labels for k in STANDARD), (doc["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == "fp"
        assert doc["metadata"]["namespace"] == NAMESPACE
    pods_by_stage = {}
    for stage, dep in rendered.deployments().items():
        selector = dep["spec"]["selector"]["matchLabels"]
        # Selectors are immutable: name + instance + component only, never version or chart.
        assert selector == {
            "app.kubernetes.io/name": "fraudpipe",
            "app.kubernetes.io/instance": "fp",
            "app.kubernetes.io/component": stage,
        }
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        pods_by_stage[stage] = pod_labels
    assert set(pods_by_stage) == {"gather", "preprocess", "train", "infer", "dashboard"}
    for svc in rendered.kind("Service"):
        selected = [
            s
            for s, labels in pods_by_stage.items()
            if svc["spec"]["selector"].items() <= labels.items()
        ]
        assert len(selected) == 1, (svc["metadata"]["name"], selected)
        for port in svc["spec"]["ports"]:
            assert port["protocol"] == "TCP"  # 1.20 server-side apply rejects it missing
            named = [
                p["name"]
                for p in rendered.deployments()[selected[0]]["spec"]["template"]["spec"][
                    "containers"
                ][0]["ports"]
            ]
            assert port["targetPort"] in named
    names = {s["metadata"]["name"] for s in rendered.kind("Service")}
    assert "fp-fraudpipe-dashboard" in names
    assert {f"fp-fraudpipe-{s}-metrics" for s in pods_by_stage} <= names


def test_service_monitor_and_pdb_only_where_the_cluster_serves_them() -> None:
    # Without the Prometheus operator's API: no ServiceMonitor, and NOTES says why. (The
    # engine's offline API list always holds policy/v1, so the PDB's gate, which matters on
    # Kubernetes < 1.21, is exercised by the real-cluster tests.)
    plain = case("monitoring")
    assert plain.kind("ServiceMonitor") == []
    assert "no ServiceMonitor was created" in plain.notes
    assert "no PodDisruptionBudget was created" not in plain.notes

    full = case("monitoring", api_versions=WITH_OPERATOR)
    (sm,) = full.kind("ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    metrics_services = [
        s
        for s in full.kind("Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    stages = set(full.deployments())
    assert stages == {"gather", "preprocess", "train", "infer", "dashboard"}
    # One per enabled stage, none of them the dashboard's web Service.
    assert sorted(s["metadata"]["name"] for s in metrics_services) == sorted(
        f"fp-fraudpipe-{s}-metrics" for s in stages
    )
    pdbs = full.kind("PodDisruptionBudget")
    assert {p["metadata"]["name"] for p in pdbs} == {f"fp-fraudpipe-{s}" for s in stages}
    assert "no ServiceMonitor" not in full.notes
    # Off by default even where the APIs exist.
    default = case("defaults", api_versions=WITH_OPERATOR)
    assert default.kind("ServiceMonitor") == [] and default.kind("PodDisruptionBudget") == []


# -- autoscaling (KEDA) -------------------------------------------------------------------------

KEDA_API = ("keda.sh/v1alpha1", *WITH_OPERATOR)
AUTOSCALED = (
    "stages.preprocess.autoscaling.enabled=true",
    "stages.infer.autoscaling.enabled=true",
    "stages.infer.autoscaling.maxReplicas=6",
    "autoscaling.prometheus.serverAddress=http://prometheus-operated.monitoring.svc:9090",
)


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server's strict field validation applies it: an
    object with declared properties takes no others (unless it preserves unknown fields)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _scaled_object_schema() -> dict[str, Any]:
    crd = yaml.safe_load(
        (Path(__file__).parent / "crds" / "keda.sh_scaledobjects.yaml").read_text()
    )
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = _strict(served["schema"]["openAPIV3Schema"])
    return schema


def test_autoscaling_renders_keda_scaled_objects_valid_by_keda_s_own_schema() -> None:
    on = render(values_from((), AUTOSCALED), api_versions=KEDA_API)
    scaled = {so["metadata"]["name"]: so for so in on.kind("ScaledObject")}
    assert set(scaled) == {"fp-fraudpipe-preprocess", "fp-fraudpipe-infer"}  # no singleton
    validator = jsonschema.Draft7Validator(_scaled_object_schema())
    for so in scaled.values():
        errors = sorted(validator.iter_errors(so), key=str)
        assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
    infer = scaled["fp-fraudpipe-infer"]["spec"]
    assert infer["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fp-fraudpipe-infer",
    }
    assert (infer["minReplicaCount"], infer["maxReplicaCount"]) == (1, 6)
    (trigger,) = infer["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "8"
    assert 'topic="features-ready",state="pending"' in trigger["metadata"]["query"]
    assert 'namespace="fraud"' in trigger["metadata"]["query"]
    pre = scaled["fp-fraudpipe-preprocess"]["spec"]["triggers"][0]["metadata"]["query"]
    assert 'topic="raw-transactions"' in pre
    # KEDA owns those replicas: the Deployments render none, so an upgrade never resets them.
    assert "fp-fraudpipe-infer: 1 to 6 replicas (KEDA, on its input's backlog)" in on.notes
    deployments = on.deployments()
    assert "replicas" not in deployments["infer"]["spec"]
    assert "replicas" not in deployments["preprocess"]["spec"]
    assert deployments["gather"]["spec"]["replicas"] == 1

    off = render(values_from((), AUTOSCALED[3:]), api_versions=KEDA_API)
    assert off.kind("ScaledObject") == []
    assert all("replicas" in d["spec"] for d in off.deployments().values())


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (AUTOSCALED[:1], "needs KEDA (API keda.sh/v1alpha1) in the cluster"),
        (AUTOSCALED[:1], "autoscaling.prometheus.serverAddress"),
        (("stages.train.autoscaling.enabled=true",), "at '/stages/train/autoscaling'"),
        (("stages.dashboard.autoscaling.enabled=true",), "at '/stages/dashboard/autoscaling'"),
        (("stages.infer.autoscaling.minReplicas=0",), "at '/stages/infer/autoscaling/minReplicas'"),
    ],
)
def test_autoscaling_refuses_what_it_cannot_do(sets: tuple[str, ...], expected: str) -> None:
    with_keda = "serverAddress" in expected
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError)) as err:
        render(values_from((), sets), api_versions=KEDA_API if with_keda else WITH_OPERATOR)
    assert expected in str(err.value)


def test_conventions_helm_users_expect() -> None:
    """A subchart's `global`, priority classes, spreading a stage's pods, and a claim that
    outlives the release unless asked otherwise."""
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname"}
    rendered = render(
        values_from(
            (),
            (
                "global.imageRegistry=registry.example.com",  # an umbrella chart's globals
                "stageDefaults.priorityClassName=fraud-high",
                "stages.infer.priorityClassName=fraud-top",
                "--set-json stages.infer.topologySpreadConstraints="
                + json.dumps([{**spread, "whenUnsatisfiable": "ScheduleAnyway"}]),
            ),
        )
    )
    pods = {s: d["spec"]["template"]["spec"] for s, d in rendered.deployments().items()}
    assert pods["infer"]["priorityClassName"] == "fraud-top"
    assert pods["gather"]["priorityClassName"] == "fraud-high"
    (constraint,) = pods["infer"]["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "infer"
    assert "topologySpreadConstraints" not in pods["gather"]
    (pvc,) = rendered.kind("PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    (pvc,) = render(values_from((), ("persistence.keepOnUninstall=false",))).kind(
        "PersistentVolumeClaim"
    )
    assert "annotations" not in pvc["metadata"]
    for bad, where in (
        ("stageDefaults.priorityClassName=Fraud_High", "at '/stageDefaults/priorityClassName'"),
        (
            "--set-json stages.infer.topologySpreadConstraints=" + json.dumps([spread]),
            "missing property 'whenUnsatisfiable'",
        ),
    ):
        with pytest.raises(helm_python.HelmValuesError) as err:
            render(values_from((), (bad,)))
        assert where in str(err.value)


# -- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["defaults", "kind", "gpu", "dashboard"])
def test_pods_are_non_root_with_read_only_root_filesystems(name: str) -> None:
    for pod in case(name).pod_specs():
        sec = pod["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0
        assert sec["fsGroup"] == 10001  # the shared volume is writable by the user
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["enableServiceLinks"] is False
        (container,) = pod["containers"]
        csec = container["securityContext"]
        assert csec["readOnlyRootFilesystem"] is True
        assert csec["allowPrivilegeEscalation"] is False
        assert csec["capabilities"] == {"drop": ["ALL"]}
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]
        is_test = container["args"][0] == "check"
        # Writable: /tmp and the shared volume, which the helm test pod only reads.
        assert writable == ({"/tmp"} if is_test else {"/tmp", "/mnt/flashblade"})


def test_only_the_dashboard_gets_an_api_token_and_its_role_is_narrow() -> None:
    # Without the dashboard, nothing in the release may call the API server.
    off = case("no-dashboard")
    assert off.kind("Role") == [] and off.kind("RoleBinding") == []
    assert all(p["automountServiceAccountToken"] is False for p in off.pod_specs())
    (sa,) = case("defaults").kind("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False

    rendered = case("defaults")  # the dashboard is on by default
    deps = rendered.deployments()
    for stage, dep in deps.items():
        assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is (
            stage == "dashboard"
        )
    (role,) = rendered.kind("Role")
    (binding,) = rendered.kind("RoleBinding")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rendered.kind("ClusterRole") == [] and rendered.kind("ClusterRoleBinding") == []
    stage_deployments = sorted(d["metadata"]["name"] for s, d in deps.items() if s != "dashboard")
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): (
            sorted(r["verbs"]),
            sorted(r.get("resourceNames", [])),
        )
        for r in role["rules"]
    }
    assert rules == {
        (("apps",), ("deployments",)): (["get"], stage_deployments),
        (("apps",), ("deployments/scale",)): (["get", "patch", "update"], stage_deployments),
        (("",), ("pods",)): (["get", "list", "watch"], []),
        (("metrics.k8s.io",), ("pods",)): (["get", "list"], []),
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fp-fraudpipe", "namespace": NAMESPACE}
    ]
    (dash,) = [d for d in rendered.pod_specs() if d.get("automountServiceAccountToken")]
    assert dash["serviceAccountName"] == "fp-fraudpipe"
    assert case("dashboard", api_versions=WITH_OPERATOR).kind("Role")
    assert render(values_from((), ("rbac.create=false",))).kind("Role") == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_dashboard_can_scale_the_stages_but_never_itself(name: str) -> None:
    rendered = case(name)
    deps = rendered.deployments()
    if "dashboard" not in deps:
        assert rendered.kind("Role") == []
        return
    (role,) = rendered.kind("Role")
    stages = sorted(d["metadata"]["name"] for s, d in deps.items() if s != "dashboard")
    on_deployments = [
        r for r in role["rules"] if {"deployments", "deployments/scale"} & set(r["resources"])
    ]
    for rule in on_deployments:
        # Named, always: an empty or missing resourceNames would grant every Deployment.
        assert rule.get("resourceNames"), rule
        assert deps["dashboard"]["metadata"]["name"] not in rule["resourceNames"], rule
        assert sorted(rule["resourceNames"]) == stages, rule
    scale = [r for r in on_deployments if "deployments/scale" in r["resources"]]
    assert bool(scale) == bool(stages)  # only the dashboard enabled: nothing to scale
    # Nothing else in the Role writes anything.
    writes = {"create", "update", "patch", "delete", "deletecollection", "*"}
    assert all(not writes & set(r["verbs"]) for r in role["rules"] if r not in scale), role


def test_no_cpu_limit_by_default_and_a_set_one_is_rendered() -> None:
    def limits(rendered: Rendered, stage: str) -> dict[str, Any]:
        return dict(_container(rendered, stage)["resources"].get("limits", {}))

    for name in ("defaults", "kind", "gpu"):
        rendered = case(name)
        for stage in rendered.deployments():
            assert "cpu" not in limits(rendered, stage), (name, stage)
    rendered = case("cpu-limits")  # infer on gpu with cpu=2, train with cpu=1500m
    assert limits(rendered, "infer") == {"memory": "2Gi", "cpu": 2, "nvidia.com/gpu": 1}
    assert limits(rendered, "train") == {"memory": "4Gi", "cpu": "1500m"}
    assert "cpu" not in limits(rendered, "preprocess")


# -- network policies -----------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if not {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]:
            return False
    return True


def _admitted(rendered: Rendered, labels: dict[str, str]) -> tuple[bool, list[tuple[Any, Any]]]:
    """How the policies treat ingress to a pod with these labels: (isolated, the (port,
    peers) pairs let in), as a network plugin computes it. A rule without `ports` lets in every
    port ("*"); without `from`, anyone ("anyone")."""
    isolated, admitted = False, []
    for policy in rendered.kind("NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        isolated = True
        for rule in spec.get("ingress") or []:
            peers = rule.get("from") or "anyone"
            for port in rule.get("ports") or [{"port": "*"}]:
                admitted.append((port["port"], peers))
    return isolated, admitted


def _pods(rendered: Rendered) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(component, labels, pod spec) of every pod the release runs, the helm test pod too."""
    pods = [
        (c, d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
        for c, d in rendered.deployments().items()
    ]
    return pods + [
        (d["metadata"]["labels"]["app.kubernetes.io/component"], d["metadata"]["labels"], d["spec"])
        for d in rendered.kind("Pod")
    ]


@pytest.mark.parametrize("name", sorted(set(CASES) - {"no-network-policy"}))
def test_network_policies_let_in_only_metrics_and_the_dashboard_port(name: str) -> None:
    rendered = case(name)
    policy_values = _values(*CASES[name]).get("networkPolicy", {})
    metrics_from = policy_values.get("metrics", {}).get("from")
    dashboard_from = policy_values.get("dashboard", {}).get("from")
    for policy in rendered.kind("NetworkPolicy"):
        # Egress stays open (values.yaml says why); only ingress is restricted.
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        assert policy["metadata"]["namespace"] == NAMESPACE
    pods = _pods(rendered)
    assert {c for c, _, _ in pods} >= {"test"}
    for component, labels, spec in pods:
        isolated, admitted = _admitted(rendered, labels)
        assert isolated, f"{component}: no policy selects its pods, so everything gets in"
        named = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
        ports = {port for port, _ in admitted}
        # Each let-in port is one the pod serves: a wrong name would shut out Prometheus.
        assert ports <= named, (component, ports, named)
        expected = {
            "test": set(),
            "dashboard": {"metrics", "http"},
        }.get(component, {"metrics"})
        assert ports == expected, (component, admitted)
        for port, peers in admitted:
            wanted = {"metrics": metrics_from, "http": dashboard_from}[port] or "anyone"
            assert peers == wanted, (component, port, peers)


def test_network_policies_are_on_by_default_and_can_be_turned_off() -> None:
    names = {p["metadata"]["name"] for p in case("defaults").kind("NetworkPolicy")}
    assert names == {"fp-fraudpipe-deny-ingress", "fp-fraudpipe-metrics", "fp-fraudpipe-dashboard"}
    assert case("no-network-policy").kind("NetworkPolicy") == []


# -- the dashboard: its token, its view of the release, its config -----------------------------


def _token(rendered: Rendered) -> str:
    secret = rendered.get("Secret", DASHBOARD_SECRET)
    assert secret["type"] == "Opaque" and set(secret["data"]) == {"token"}
    return base64.b64decode(secret["data"]["token"]).decode()


def test_dashboard_token_secret_is_random_by_default_and_the_given_one_when_set() -> None:
    first, second = _token(case("defaults")), _token(case("defaults"))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", first), first
    # Drawn per install, never a constant baked into the chart.
    assert first != second
    assert _token(case("dashboard-token")) == "s3cret-token"
    assert case("no-dashboard").kind("Secret") == []
    notes = case("defaults").notes
    assert (
        f"kubectl -n {NAMESPACE} get secret {DASHBOARD_SECRET} -o jsonpath='{{.data.token}}'"
        " | base64 -d" in notes
    )
    assert "http://127.0.0.1:8080/#token=<token>" in notes
    assert "get secret" not in case("no-dashboard").notes


def test_existing_secret_renders_no_secret_and_the_dashboard_reads_it() -> None:
    rendered = case("dashboard-existing-secret")
    assert rendered.kind("Secret") == []
    env = _env(_container(rendered, "dashboard"))
    assert env["FRAUDPIPE_DASHBOARD__TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "my-dashboard-token", "key": "token"}
    }
    assert "get secret my-dashboard-token" in rendered.notes


@pytest.mark.parametrize("name", ["defaults", "extras", "gpu", "dashboard-existing-secret"])
def test_only_the_dashboard_container_sees_the_token(name: str) -> None:
    rendered = case(name)
    secret_name = {"dashboard-existing-secret": "my-dashboard-token"}.get(name, "")
    with_token = []
    for pod in rendered.pod_specs():
        for container in pod["containers"]:
            env = _env(container)
            if "FRAUDPIPE_DASHBOARD__TOKEN" in env:
                with_token.append(container["name"])
                ref = env["FRAUDPIPE_DASHBOARD__TOKEN"]["valueFrom"]["secretKeyRef"]
                # Never the value itself in the pod spec.
                assert "value" not in env["FRAUDPIPE_DASHBOARD__TOKEN"]
                assert ref["key"] == "token"
                assert ref["name"] == (
                    secret_name or rendered.kind("Secret")[0]["metadata"]["name"]
                )
            # No other container refers to any Secret at all.
            elif container["name"] != "dashboard":
                assert "secretKeyRef" not in json.dumps(container), container["name"]
    assert with_token == ["dashboard"]


@pytest.mark.parametrize("name", ["defaults", "paused-train", "extras", "gpu"])
def test_dashboard_knows_exactly_this_releases_deployments_and_pods(name: str) -> None:
    rendered = case(name)
    deployments = rendered.deployments()
    env = _env(_container(rendered, "dashboard"))
    listed = json.loads(env["K8S_DEPLOYMENTS"]["value"])
    assert listed == {
        stage: d["metadata"]["name"] for stage, d in deployments.items() if stage != "dashboard"
    }
    # The names its Role lets it scale, no more, no fewer.
    (role,) = rendered.kind("Role")
    (scale,) = [r for r in role["rules"] if r["resources"] == ["deployments/scale"]]
    assert sorted(scale["resourceNames"]) == sorted(listed.values())
    # The pod selector matches every pod of the release and names no stage.
    selector = dict(term.split("=", 1) for term in env["K8S_POD_SELECTOR"]["value"].split(","))
    assert selector == {"app.kubernetes.io/name": "fraudpipe", "app.kubernetes.io/instance": "fp"}
    for dep in deployments.values():
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert "POD_NAMESPACE" in env
    for stage in set(deployments) - {"dashboard"}:
        others = _env(_container(rendered, stage))
        assert not {"K8S_DEPLOYMENTS", "K8S_POD_SELECTOR"} & set(others), stage


@pytest.mark.parametrize("name", ["defaults", "dashboard-hosts", "only-dashboard"])
def test_the_dashboard_answers_to_port_forwards_its_service_and_the_given_hosts(
    name: str, tmp_path: Path
) -> None:
    rendered = case(name)
    settings = load_settings(_config_file(rendered, tmp_path))
    allowed = allowed_hosts(settings.dashboard)  # what the dashboard's Host check uses
    svc = rendered.get("Service", "fp-fraudpipe-dashboard")["metadata"]["name"]
    in_cluster = [svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc"]
    for host in ["127.0.0.1", "localhost", "::1", *in_cluster, f"{in_cluster[-1]}.cluster.local"]:
        assert host_allowed(host, allowed), host
    given = name == "dashboard-hosts"  # dashboard.allowedHosts={fraud.example.com,.corp.example}
    for host in ("fraud.example.com", "corp.example", "dash.corp.example"):
        assert host_allowed(host, allowed) is given, host
    for host in ("evil.test", "fp-fraudpipe-dashboard.other", "example.com"):
        assert not host_allowed(host, allowed), host


@pytest.mark.parametrize("name", ["dashboard", "defaults"])
def test_notes_say_how_to_allow_the_address_of_a_node_port_or_load_balancer(name: str) -> None:
    notes = case(name).notes
    exposed = name == "dashboard"  # dashboard.service.type=NodePort
    assert ("dashboard.allowedHosts" in notes) is exposed, notes


def test_configmap_gives_the_dashboard_its_host_and_port(tmp_path: Path) -> None:
    for name, port in (("defaults", 8080), ("dashboard", 8081)):
        rendered = case(name)
        settings = load_settings(_config_file(rendered, tmp_path))
        assert settings.dashboard.host == "0.0.0.0" and settings.dashboard.port == port
        assert settings.dashboard.token is None  # the token only comes from the Secret
        (http,) = [p for p in _container(rendered, "dashboard")["ports"] if p["name"] == "http"]
        assert http["containerPort"] == port


# -- schema rejections --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_expr", "expected"),
    [
        ("stages.infer.replicas=-1", "at '/stages/infer/replicas': minimum: got -1"),
        ("stages.preprocess.device=tpu", "at '/stages/preprocess/device': value must be one of"),
        ("stages.gather.device=gpu", "at '/stages/gather/device': value must be 'cpu'"),
        ("stages.dashboard.device=gpu", "at '/stages/dashboard/device': value must be 'cpu'"),
        ("stages.dashboard.gpus=1", "at '/stages/dashboard/gpus': 'not' failed"),
        ("stageDefaults.replicas=2", "at '/stageDefaults': additional properties 'replicas'"),
        ("stageDefaults.probes.liveness.periodSeconds=0", "at '/stageDefaults/probes/liveness"),
        ("dashboard.ingress.enabled=true", "at '/dashboard/ingress/hosts': minItems: got 0"),
        (
            "dashboard.ingress.enabled=true,dashboard.ingress.hosts={Fraud.Example.com}",
            "at '/dashboard/ingress/hosts/0': 'Fraud.Example.com' does not match pattern",
        ),
        (
            "persistence.accessMode=ReadWriteSometimes",
            "at '/persistence/accessMode': value must be one of 'ReadWriteMany', 'ReadWriteOnce'",
        ),
        ("persistence.size=10", "at '/persistence/size': got number, want string"),
        ("persistence.size=ten", "at '/persistence/size': 'ten' does not match pattern"),
        ("persistence.size=10gb", "at '/persistence/size': '10gb' does not match pattern"),
        ("stages.gather.replicas=2", "at '/stages/gather/replicas': maximum: got 2, want 1"),
        ("stages.infer.resources.requests.cpu=lots", "at '/stages/infer/resources/requests/cpu'"),
        ("stages.spark.enabled=true", "at '/stages': additional properties 'spark' not allowed"),
        ("config.gather.rate=-5", "at '/config/gather/rate': exclusiveMinimum: got -5, want 0"),
        ("config.infer.threshold=2", "at '/config/infer/threshold'"),
        (
            "config.queue.lease_seconds=5",
            "at '/config/queue': additional properties 'lease_seconds'",
        ),
        ("config.data_dir=/x", "at '/config': additional properties 'data_dir' not allowed"),
        ("config.dashboard.port=1", "at '/config': additional properties 'dashboard' not allowed"),
        ("dashboard.token=12345", "at '/dashboard/token': got number, want string"),
        ("dashboard.existingSecret=My_Secret", "at '/dashboard/existingSecret': 'My_Secret'"),
        (
            "grafana.dashboard.labels.grafana_dashboard=1",
            "at '/grafana/dashboard/labels/grafana_dashboard': got number, want string",
        ),
        ("grafana.dashboard.folder=x", "at '/grafana/dashboard': additional properties 'folder'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("metrics.port=70000", "at '/metrics/port': maximum: got 70,000, want 65,535"),
        (
            "dashboard.allowedHosts[0]=https://fraud.example.com",
            "at '/dashboard/allowedHosts/0': 'https://fraud.example.com' does not match pattern",
        ),
        ("dashboard.allowedHosts[0]=fraud.example.com:443", "at '/dashboard/allowedHosts/0'"),
        ("networkPolicy.enabled=yes", "at '/networkPolicy/enabled': got string, want boolean"),
        (
            "networkPolicy.metrics.from[0].ipBlock.except[0]=10.0.0.0/8",
            "at '/networkPolicy/metrics/from/0/ipBlock': missing property 'cidr'",
        ),
        (
            "networkPolicy.dashboard.from[0].everyone=true",
            "at '/networkPolicy/dashboard/from/0': additional properties 'everyone' not allowed",
        ),
        ("networkPolicy.egress=true", "at '/networkPolicy': additional properties 'egress'"),
        ("stages.infer.resources.limits.cpu=lots", "at '/stages/infer/resources/limits/cpu'"),
    ],
)
def test_bad_values_fail_with_a_message_naming_them(set_expr: str, expected: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(values_from((), (set_expr,)))
    assert expected in str(err.value)


def test_a_train_stage_on_the_gpu_needs_the_bins_its_learner_holds() -> None:
    """LightGBM's GPU learner holds 255 bins a feature, fewer than train.max_bin's default: the
    schema refuses the GPU train stage without it (the worker would exit 2 naming the field)."""
    gpu = "stages.train.device=gpu"
    for sets, expected in (
        ((gpu,), "at '/config': missing property 'train'"),
        (
            (gpu, "config.train.max_bin=4095"),
            "at '/config/train/max_bin': maximum: got 4,095, want 255",
        ),
    ):
        with pytest.raises(helm_python.HelmValuesError) as err:
            render(values_from((), sets))
        assert expected in str(err.value)
    train = render(values_from((), (gpu, "config.train.max_bin=255"))).deployments()["train"]
    assert "--device=gpu" in train["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    "entry",
    [
        "fraud.example.com",
        "FRAUD.example.com",
        ".example.com",
        "*.example.com",
        "*",
        "10.0.0.5",
        "[fd00::1]",
        "my_host.local.",
        "https://fraud.example.com",
        "fraud.example.com:443",
        "fraud.example.com/",
        "::1",
        "[::zz]",
        "*.",
        "a b",
        "",
        "-bad.example.com",
    ],
)
def test_the_chart_and_the_dashboard_agree_on_allowed_hosts(entry: str) -> None:
    """What helm accepts for dashboard.allowedHosts, the dashboard accepts from its config."""
    try:
        render(values_from((), (f"--set-json dashboard.allowedHosts={json.dumps([entry])}",)))
        chart_ok = True
    except helm_python.HelmValuesError:
        chart_ok = False
    try:
        load_settings(overrides={"dashboard.allowed_hosts": [entry]})
        config_ok = True
    except ConfigError:
        config_ok = False
    assert chart_ok == config_ok, (entry, chart_ok, config_ok)


def test_config_schema_is_generated_from_the_configuration_model() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import chart_schema
    finally:
        sys.path.pop(0)
    current = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert chart_schema.synced(current) == current, "run `make chart-schema`"


# -- the rendered pods really run fraudpipe -----------------------------------------------------


def _config_file(rendered: Rendered, tmp_path: Path) -> Path:
    """The config file the pods mount (the ConfigMap their `config` volume names)."""
    pod = rendered.pod_specs()[0]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    cm = rendered.get("ConfigMap", volume["configMap"]["name"])
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return path


def test_configmap_is_a_valid_pipeline_config_with_the_chart_owned_fields(tmp_path: Path) -> None:
    rendered = case("extras")
    settings = load_settings(_config_file(rendered, tmp_path))
    assert str(settings.data_dir) == "/mnt/flashblade"
    assert settings.metrics.port == 9108 and settings.metrics.host == "0.0.0.0"
    assert settings.gather.rate == 500 and settings.infer.threshold == 0.7
    deps = rendered.deployments()
    assert {"name": "FRAUDPIPE_INFER__THREADS", "value": "2"} in deps["infer"]["spec"]["template"][
        "spec"
    ]["containers"][0]["env"]
    # A config change rolls the pods; the same config does not.
    assert (
        deps["infer"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        != case("kind").deployments()["infer"]["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
    )
    assert _without_random_token(case("kind").docs) == _without_random_token(case("kind").docs)


def _run_container(
    container: dict[str, Any], config: Path, data: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The container's command, as the image's entrypoint `fraudpipe` would run it."""
    args = [a for a in container["args"] if not a.startswith("--config=")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    # The environment outranks the file: point data_dir and the port at this test.
    env |= {"FRAUDPIPE_DATA_DIR": str(data), "FRAUDPIPE_METRICS__PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "fraudpipe", *args, f"--config={config}", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rendered_commands_start_the_stages_and_the_helm_test(tmp_path: Path) -> None:
    rendered = case("kind")
    config = _config_file(rendered, tmp_path)
    data = tmp_path / "data"
    gather = rendered.deployments()["gather"]["spec"]["template"]["spec"]["containers"][0]
    done = _run_container(gather, config, data, "--once")
    assert done.returncode == 0, done.stderr
    assert list((data / "queue" / "raw-transactions" / "pending").glob("*.parquet"))

    (test_pod,) = rendered.kind("Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    check = _run_container(test_pod["spec"]["containers"][0], config, data, "--timeout=1")
    # Nothing runs here, so the check must fail and say what stands still.
    assert check.returncode == 1
    assert "no live infer worker" in check.stderr
    assert "no model promoted yet" in check.stderr


# -- the Grafana dashboard ----------------------------------------------------------------------

GRAFANA_JSON = CHART / "dashboards" / "fraudpipe.json"


def _exposed_metrics() -> tuple[set[str], set[str]]:
    """(sample names, label names) a worker's /metrics shows once every family has a child."""
    metrics = Metrics()
    for family in vars(metrics).values():
        labelnames = getattr(family, "_labelnames", ())
        if labelnames:
            family.labels(*["x"] * len(labelnames))
    names, labels = set(), set()
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            sample = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", line)
            assert sample
            names.add(sample.group(1))
            labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)=", sample.group(2) or ""))
    return names, labels


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(GRAFANA_JSON.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


def test_grafana_dashboard_structure() -> None:
    dashboard = json.loads(GRAFANA_JSON.read_text())
    assert dashboard["uid"] == "fraudpipe" and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "stage"):
        var = variables[name]
        assert var["type"] == "query" and var["query"].startswith("label_values(")
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # "All" is a regex matching any value, and an absent label: plain scrapes work too.
        assert var["includeAll"] and var["allValue"] == ".*"
    panels = _panels()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
    exprs = "\n".join(_exprs())
    for wanted in (
        "sum by (stage) (rate(fraudpipe_rows_total{",
        "histogram_quantile(0.5, sum by (le) (rate(fraudpipe_e2e_latency_seconds_bucket{",
        "histogram_quantile(0.95, sum by (le) (rate(fraudpipe_e2e_latency_seconds_bucket{",
        "histogram_quantile(0.99, sum by (le) (rate(fraudpipe_e2e_latency_seconds_bucket{",
        "max by (topic, state) (fraudpipe_queue_depth{",
        "fraudpipe_alerts_total",
        "sum by (stage, outcome) (rate(fraudpipe_batches_total{",
        "fraudpipe_errors_total",
        "fraudpipe_lease_lost_total",
        "fraudpipe_reaped_total",
        "fraudpipe_backpressure_seconds_total",
        "sum by (outcome) (increase(fraudpipe_trainings_total{",
        "sum by (is_fraud) (rate(fraudpipe_labels_total{",
        "fraudpipe_model_info",
    ):
        assert wanted in exprs, wanted


def test_grafana_dashboard_uses_only_metrics_and_labels_workers_expose() -> None:
    names, labels = _exposed_metrics()
    text = GRAFANA_JSON.read_text()
    used = set(re.findall(r"fraudpipe_[a-z0-9_]+", text))
    assert used and used <= names, sorted(used - names)
    for expr in _exprs():
        assert expr.count("(") == expr.count(")"), expr
        for selector in re.findall(r"fraudpipe_[a-z0-9_]+\{([^}]*)\}", expr):
            matchers = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', selector))
            # Every query follows the namespace variable ("All" is `.*`, so it matches series
            # without a namespace label too) ...
            assert matchers.get("namespace") == "$namespace", expr
            # ... and filters on nothing but the metrics' own labels: no ServiceMonitor needed.
            assert set(matchers) - {"namespace"} <= labels, expr
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            assert {g.strip() for g in grouping.split(",")} <= labels, expr


def test_grafana_dashboard_configmap_only_when_enabled() -> None:
    assert not [c for c in case("defaults").kind("ConfigMap") if "grafana" in c["metadata"]["name"]]
    rendered = case("grafana")
    cm = rendered.get("ConfigMap", "fp-fraudpipe-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "fp"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Fraud"}
    assert json.loads(cm["data"]["fraudpipe.json"]) == json.loads(GRAFANA_JSON.read_text())
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(cm, version, strict=True)
    # Defaults: the release namespace, no annotations. Labels merge with the default one like
    # any helm map; null drops it (for a sidecar that selects by another label).
    plain = render(values_from((), ("grafana.dashboard.enabled=true",)))
    cm = plain.get("ConfigMap", "fp-fraudpipe-grafana-dashboard")
    assert cm["metadata"]["namespace"] == NAMESPACE and "annotations" not in cm["metadata"]
    custom = render(
        values_from(
            (),
            (
                "grafana.dashboard.enabled=true",
                "--set-json grafana.dashboard.labels="
                '{"dashboards":"fraud","grafana_dashboard":null}',
            ),
        )
    ).get("ConfigMap", "fp-fraudpipe-grafana-dashboard")
    assert custom["metadata"]["labels"]["dashboards"] == "fraud"
    assert "grafana_dashboard" not in custom["metadata"]["labels"]


# -- the README's helm commands work as written -------------------------------------------------


def _readme_helm_commands() -> list[list[str]]:
    """Every `helm install|upgrade` command in README code blocks, split like a shell would."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [
        shlex.split(line.split("#")[0].lstrip("$ "))
        for line in text.splitlines()
        if re.match(r"^(\$ )?helm (install|upgrade) ", line)
    ]


def _as_values(argv: list[str], base: dict[str, Any]) -> dict[str, Any]:
    files, sets = [], []
    values = base if "--reuse-values" in argv else {}
    for flag, arg in zip(argv, [*argv[1:], ""], strict=True):
        if flag == "-f":
            files.append(arg)
        elif flag in ("--set", "--set-json", "--set-string"):
            sets.append(arg if flag == "--set" else f"{flag} {arg}")
    return deep_merge(values, values_from(files, sets))


def test_readme_helm_commands_render_as_documented() -> None:
    commands = _readme_helm_commands()
    assert len(commands) >= 6, commands
    installed = values_from(("values-kind.yaml",))  # what `make kind-up` installed
    baseline = render(installed).deployments()
    seen_files: set[str] = set()
    for argv in commands:
        assert argv[3] == "./chart", argv
        seen_files |= {a for a in argv if a.startswith("values-")}
        values = _as_values(argv, installed)
        if "stages.infer.replicas=-1" in argv:
            with pytest.raises(helm_python.HelmValuesError) as err:
                render(values)
            readme = (ROOT / "README.md").read_text()
            quoted = "- at '/stages/infer/replicas': minimum: got -1, want 0"
            assert quoted in readme and quoted in str(err.value)
            continue
        if "stages.infer.autoscaling.enabled=true" in argv:  # on a cluster that serves KEDA
            (so,) = render(values, api_versions=KEDA_API).kind("ScaledObject")
            assert so["spec"]["maxReplicaCount"] == 8
            continue
        deployments = render(values).deployments()
        if "stages.infer.replicas=5" in argv:
            assert deployments["infer"]["spec"]["replicas"] == 5
            for stage in ("gather", "preprocess", "train"):
                assert deployments[stage] == baseline[stage]
    assert seen_files == {"values-kind.yaml", "values-gpu.yaml"}


def test_chart_app_version_is_the_package_version() -> None:
    """The default image tag is the appVersion: it must name the image `make image` builds."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{chart["appVersion"]}"\n' in pyproject


# -- stageDefaults, the dashboard's Ingress, the chart's README and package -------------------


def test_stage_defaults_reach_every_stage_and_a_stages_own_keys_win(tmp_path: Path) -> None:
    rendered = case("ci/stage-overrides-values.yaml")
    pods = {s: d["spec"]["template"]["spec"] for s, d in rendered.deployments().items()}
    assert set(pods) == {"gather", "preprocess", "train", "infer", "dashboard"}
    for stage, pod in pods.items():
        (container,) = pod["containers"]
        assert _env(container)["FRAUDPIPE_LOG__LEVEL"]["value"] == "INFO", stage
        annotations = rendered.deployments()[stage]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["team"] == "fraud", stage
        own = stage == "train"
        # A stage's map merges over the default's key by key; its list replaces the default's.
        assert pod["nodeSelector"] == {"pool": "fraud-train" if own else "fraud"}, stage
        assert ("tolerations" in pod) is not own, stage
        assert container["livenessProbe"]["failureThreshold"] == 10, stage
        assert container["livenessProbe"]["periodSeconds"] == (30 if own else 10), stage
        assert container["readinessProbe"]["failureThreshold"] == 3, stage
        # false replaces true (a plain sprig merge would keep the default's true).
        assert container["securityContext"]["readOnlyRootFilesystem"] is not own, stage
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, stage
        assert pod["securityContext"]["runAsNonRoot"] is True, stage
    (test_pod,) = rendered.kind("Pod")
    assert test_pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The config the workers read is the same whatever the stage defaults.
    assert load_settings(_config_file(rendered, tmp_path)).log.level == "INFO"


def test_the_dashboard_ingress_routes_its_hosts_and_the_dashboard_answers_them(
    tmp_path: Path,
) -> None:
    assert case("defaults").kind("Ingress") == []
    rendered = case("ci/flashblade-values.yaml")
    (ingress,) = rendered.kind("Ingress")
    assert ingress["metadata"]["name"] == "fp-fraudpipe-dashboard"
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "fraud-dashboard-tls", "hosts": ["fraud.example.com"]}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "fraud.example.com"
    (path,) = rule["http"]["paths"]
    service = rendered.get("Service", "fp-fraudpipe-dashboard")
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": service["spec"]["ports"][0]["name"]},
    }
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    settings = load_settings(_config_file(rendered, tmp_path))
    assert host_allowed("fraud.example.com", allowed_hosts(settings.dashboard))
    # Off, its hosts are not answered to; without the dashboard there is no Ingress.
    off = render(
        values_from(("chart/ci/flashblade-values.yaml",), ("dashboard.ingress.enabled=false",)),
        api_versions=KEDA_API,
    )
    settings = load_settings(_config_file(off, tmp_path))
    assert not host_allowed("fraud.example.com", allowed_hosts(settings.dashboard))
    assert off.kind("Ingress") == []
    gone = render(
        values_from(("chart/ci/flashblade-values.yaml",), ("stages.dashboard.enabled=false",)),
        api_versions=KEDA_API,
    )
    assert gone.kind("Ingress") == []


def _chart_readme() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    import chart_readme

    return chart_readme


def test_the_chart_readme_is_generated_from_the_values_comments() -> None:
    generator = _chart_readme()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values_yaml = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    assert readme == generator.render(values_yaml, chart), "stale: run `make chart-readme`"
    assert "| `stageDefaults.probes` | object |" in readme
    assert "| `dashboard.ingress.hosts` | list | `[]` |" in readme
    undocumented = values_yaml.replace("    port: 80\n", "    port: 80\n    nodePort: 30080\n")
    assert undocumented != values_yaml
    with pytest.raises(SystemExit, match=r"`dashboard\.service\.nodePort` has no `# --` comment"):
        generator.render(undocumented, chart)


def test_the_chart_packages_and_the_package_installs_as_the_folder_does(tmp_path: Path) -> None:
    archive = Path(helm_python.package(CHART, destination=tmp_path))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert archive.name == f"fraudpipe-{chart['version']}.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"fraudpipe/README.md", "fraudpipe/values.schema.json"} <= names
    assert "fraudpipe/dashboards/fraudpipe.json" in names  # the Grafana ConfigMap reads it
    assert not [n for n in names if n.startswith("fraudpipe/ci/")]
    values = values_from(("values-kind.yaml",))
    out = helm_python.Chart.load(archive).render(
        values, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    docs = [
        d
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    key = json.dumps
    assert sorted(map(key, _without_random_token(docs))) == sorted(
        map(key, _without_random_token(render(values).docs))
    )


def test_kube_version_is_what_the_tests_run_against() -> None:
    """kubeVersion's floor is the oldest Kubernetes a test installs on (the e2e cluster built
    from Debian 12's kubernetes 1.20, where `helm install` checks it), below every version the
    documents are validated against; no ceiling, so a new minor release installs."""
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert floor == ">=1.20.0-0"
    assert all(tuple(map(int, v.split("."))) > (1, 20) for v in KUBE_VERSIONS)
    for version in ("1.20.5", *(f"{v}.0" for v in KUBE_VERSIONS)):
        assert render(kube_version=version).kind("Deployment"), version
