"""The chart in a real cluster, with the real Helm engine: install, every stage Ready,
`helm test` (transactions flow inside the pods), the dashboard scaling a stage through the
API server (its token and Role), `helm upgrade` to 3 infer replicas while transactions flow
(the new pods take batches; the token is kept), rollback, nothing lost or duplicated,
uninstall (nothing left but the kept claim).

Needs a cluster: `make e2e` builds one on this machine from Debian's sources (hack/), or
uses kind when it is installed, and sets the FRAUDPIPE_E2E_* variables read below
(FRAUDPIPE_E2E_VALUES=FILE adds your own values over the test's).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.chart import deep_merge
from tests.conftest import post_json
from tests.e2e.kube import Kube, wait_until

REPO = Path(__file__).resolve().parents[2]
PREFIX_ENV = "FRAUDPIPE_E2E_"
ENV = {k[len(PREFIX_ENV) :].lower(): v for k, v in os.environ.items() if k.startswith(PREFIX_ENV)}
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif("kubeconfig" not in ENV, reason="needs a cluster: run `make e2e`"),
]

RELEASE = "e2e"
PREFIX = f"{RELEASE}-fraudpipe"
STAGES = ("gather", "preprocess", "train", "infer", "dashboard")
DAYS = 36  # simulated days gather generates: long enough to upgrade while they flow
# A small world that trains its first model within a minute and streams for ~3 minutes.
CONFIG: dict[str, Any] = {
    "gather": {
        "rate": 1000,
        "days": DAYS,
        "batch_interval_s": 0.5,
        "simulator": {"n_customers": 2000, "n_terminals": 4000},
    },
    "train": {
        "min_labeled_rows": 3000,
        "min_frauds": 20,
        "interval_s": 20,
        "threads": 1,
        "num_boost_round": 60,
    },
}
AUDIT = (Path(__file__).parent / "audit.py").read_text()


def values() -> dict[str, Any]:
    """values-kind.yaml, adapted to the cluster at hand (as `-f values-kind.yaml --set ...`)."""
    v: dict[str, Any] = yaml.safe_load((REPO / "values-kind.yaml").read_text())
    repo, _, tag = ENV["image"].rpartition(":")
    v["image"].update(repository=repo, tag=tag)
    v["config"] = {**v.get("config", {}), **CONFIG}
    v["config"]["gather"] = {**v["config"].get("gather", {}), **CONFIG["gather"]}
    v["persistence"]["annotations"] = {"helm.sh/resource-policy": "keep"}
    # Rendered only where policy/v1 is served (1.21+): on a 1.20 cluster the gate must skip it.
    v["podDisruptionBudget"] = {"enabled": True}
    if "hostpath" in ENV:  # no provisioner: a pre-created PersistentVolume without a class
        v["persistence"]["storageClass"] = "-"
    if "values" in ENV:  # FRAUDPIPE_E2E_VALUES=FILE: your overrides, as a last `-f FILE`
        v = deep_merge(v, yaml.safe_load(Path(ENV["values"]).read_text()) or {})
    return v


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    namespace = ENV.get("namespace", "fraudpipe-e2e")
    k = Kube(ENV.get("kubectl", "kubectl"), ENV["kubeconfig"], namespace)
    k.run("create", "namespace", k.namespace)
    if "hostpath" in ENV:
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{k.namespace}-data"},
                "spec": {
                    "capacity": {"storage": "5Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": ENV["hostpath"], "type": "Directory"},
                    "claimRef": {"namespace": k.namespace, "name": f"{PREFIX}-data"},
                },
            }
        )
    yield k
    k.run("delete", "namespace", k.namespace, "--ignore-not-found", "--timeout=180s", timeout=200)
    if "hostpath" in ENV:
        k.run("delete", "pv", f"{k.namespace}-data", "--ignore-not-found")


@pytest.fixture(scope="module")
def helm(kube: Kube) -> Iterator[helm_python.Config]:
    cfg = helm_python.Config(kubeconfig_path=kube.kubeconfig, namespace=kube.namespace)
    yield cfg
    cfg.close()


@pytest.fixture
def diagnostics(kube: Kube, request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure: pod descriptions, events and logs, printed and under test-artifacts/e2e."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(kube.dump(REPO / "test-artifacts" / "e2e"))


def stage_pods(kube: Kube, stage: str) -> list[dict[str, Any]]:
    return kube.pods(f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={stage}")


def ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["metadata"].get("deletionTimestamp") is None and conds.get("Ready") == "True"


def assert_no_crash(kube: Kube) -> None:
    """No stage container has restarted or failed since the install."""
    for stage in STAGES:
        for pod in stage_pods(kube, stage):
            for c in pod["status"].get("containerStatuses", []):
                assert c["restartCount"] == 0, (
                    f"{pod['metadata']['name']} restarted {c['restartCount']}x: "
                    f"{json.dumps(c.get('lastState'))}"
                )
            assert pod["status"].get("phase") != "Failed", pod["metadata"]["name"]


def wait_stages_ready(kube: Kube, replicas: dict[str, int], timeout_s: float = 240) -> None:
    def all_ready() -> bool:
        assert_no_crash(kube)
        return all(
            sum(ready(p) for p in stage_pods(kube, s)) == n
            and len(stage_pods(kube, s)) == n  # old pods of a scale-down gone too
            for s, n in replicas.items()
        )

    wait_until(f"stages Ready with replicas {replicas}", timeout_s, all_ready)


def in_cluster(kube: Kube, mode: str, timeout_s: float = 60) -> dict[str, Any]:
    """Run audit.py in a pod shaped like the infer pods (image, config, claim read-only)."""
    deploy = kube.get("deployment", f"{PREFIX}-infer")
    spec = deploy["spec"]["template"]["spec"]
    container = spec["containers"][0]
    container.update(
        name="audit",
        command=["/opt/fraudpipe/bin/python", "-c", AUDIT, mode, str(timeout_s)],
        args=[],
    )
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        container.pop(probe, None)
    container.pop("ports", None)
    for mount in container["volumeMounts"]:
        if mount["name"] == "data":
            mount["readOnly"] = True
    spec.update(restartPolicy="Never", containers=[container])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{RELEASE}-audit-{mode}", "labels": {"e2e": "audit"}},
        "spec": spec,
    }
    out = kube.run_pod(pod, timeout_s=timeout_s + 120)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(1800)
def test_install_flow_scale_test_rollback_uninstall(
    kube: Kube, helm: helm_python.Config, diagnostics: None
) -> None:
    chart = helm_python.Chart.load(REPO / "chart")
    v = values()

    # 1. install; every stage Ready (no crash on the way); the API server took the policies
    helm.install(chart, RELEASE, v, wait="watcher", timeout=300)
    wait_stages_ready(kube, {s: 1 for s in STAGES})
    policies = kube.get("networkpolicies", "-l", f"app.kubernetes.io/instance={RELEASE}")
    assert sorted(p["metadata"]["name"] for p in policies["items"]) == [
        f"{PREFIX}-dashboard",
        f"{PREFIX}-deny-ingress",
        f"{PREFIX}-metrics",
    ]

    # 2. helm test: a transaction generated after the test started is scored, inside a pod
    out = helm.test(RELEASE, timeout=420, logs=True)
    print("helm test:", out.get("logs", ""))
    now = in_cluster(kube, "status")
    assert now["topics"]["inference-results"]["done"] + now["topics"]["inference-results"][
        "pending"
    ] > 0 or any(w["stage"] == "infer" and w["batches"] for w in now["workers"]), now
    assert not any(w["stage"] == "gather" and w["finished"] for w in now["workers"]), (
        "gather finished before the upgrade: raise DAYS or lower the rate"
    )

    # 3. the dashboard scales infer to 2 through the API server, with the chart's Role; it
    #    refuses without the token the chart generated
    token = kube.get("secret", f"{PREFIX}-dashboard")["data"]["token"]
    with kube.port_forward(f"service/{PREFIX}-dashboard", 80) as url:
        with urllib.request.urlopen(f"{url}/api/snapshot", timeout=10) as resp:
            snapshot = json.loads(resp.read())
        assert snapshot["cluster"]["mode"] == "kubernetes", snapshot["cluster"]
        scale = {"stage": "infer", "replicas": 2}
        assert post_json(f"{url}/api/control/scale", scale, None)[0] == 401
        answer = post_json(f"{url}/api/control/scale", scale, base64.b64decode(token).decode())
        assert answer[0] == 200, answer
    assert kube.get("deployment", f"{PREFIX}-infer")["spec"]["replicas"] == 2
    wait_stages_ready(kube, {**{s: 1 for s in STAGES}, "infer": 2})

    # 4. helm upgrade --set stages.infer.replicas=3 while transactions flow
    up = {**v, "stages": {**v["stages"], "infer": {**v["stages"]["infer"], "replicas": 3}}}
    helm.upgrade(chart, RELEASE, up, wait="watcher", timeout=300)
    assert kube.get("deployment", f"{PREFIX}-infer")["spec"]["replicas"] == 3
    assert kube.get("secret", f"{PREFIX}-dashboard")["data"]["token"] == token, "token kept"
    wait_stages_ready(kube, {**{s: 1 for s in STAGES}, "infer": 3})
    infer_pods = {p["metadata"]["name"] for p in stage_pods(kube, "infer")}

    def all_infer_pods_working() -> dict[str, Any] | None:
        now = in_cluster(kube, "status")
        working = {w["host"] for w in now["workers"] if w["stage"] == "infer" and w["batches"]}
        assert not any(w["stage"] == "gather" and w["finished"] for w in now["workers"]) or (
            infer_pods <= working
        ), f"generation ended before every infer pod scored a batch: {now}"
        return now if infer_pods <= working else None

    wait_until("each of the 3 infer pods to score batches", 180, all_infer_pods_working, every_s=5)

    # 5. roll back to revision 1 (one infer pod again), still flowing
    helm.rollback(RELEASE, version=1, wait="watcher", timeout=300)
    assert kube.get("deployment", f"{PREFIX}-infer")["spec"]["replicas"] == 1
    wait_stages_ready(kube, {s: 1 for s in STAGES})
    assert [r["revision"] for r in helm.history(RELEASE)] == [1, 2, 3]

    # 6. every generated transaction scored exactly once, across the upgrade and the rollback
    audit = in_cluster(kube, "audit", timeout_s=420)
    assert audit["drained"], f"pipeline did not drain: {audit}"
    wrong = {k: audit[k] for k in ("duplicated", "missing", "unknown") if audit[k]}
    assert not wrong, (
        f"of {audit['generated']} transactions generated: {wrong} "
        "(duplicated: scored more than once; missing: never scored; unknown: never generated)"
    )
    assert audit["scored_rows"] == audit["generated"] > 0
    print(f"audit: {audit['generated']} transactions generated, each scored exactly once")
    assert_no_crash(kube)

    # 7. uninstall: no pods, no objects of the release left but the kept claim
    helm.uninstall(RELEASE, wait="watcher", timeout=300)
    wait_until("every pod to go", 120, lambda: not kube.get("pods")["items"])
    left = kube.get(
        "deployments,replicasets,services,configmaps,secrets,serviceaccounts,roles,rolebindings,"
        "poddisruptionbudgets,networkpolicies,persistentvolumeclaims",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
    )["items"]
    assert [(o["kind"], o["metadata"]["name"]) for o in left] == [
        ("PersistentVolumeClaim", f"{PREFIX}-data")
    ]
    assert not helm.list(all_states=True)
