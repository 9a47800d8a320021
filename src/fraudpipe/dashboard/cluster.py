"""The dashboard's view of Kubernetes: pod CPU/memory from the metrics API, and scaling.

In a pod, the API server is reached with the pod's ServiceAccount token; the chart's Role
grants exactly what is used here (get/scale this release's Deployments, read pods and pod
metrics), and tells the dashboard its Deployments (K8S_DEPLOYMENTS, stage -> name) and its pods
(K8S_POD_SELECTOR). Outside a cluster nothing is called and the page says so. When the metrics
API is missing or refuses, the payload says `unavailable` with the API's answer, never zeros.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_TIMEOUT_S = 3.0


class ScaleError(Exception):
    """Scaling was refused or is not possible here; the message says why (HTTP status too)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PodMetrics:
    status: Literal["available", "unavailable", "not in a cluster"]
    detail: str | None
    by_pod: dict[str, dict[str, Any]] = field(default_factory=dict)


def _quantity(text: str) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in bytes)."""
    suffixes = {
        "n": 1e-9,
        "u": 1e-6,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


class ClusterView:
    def __init__(self, env: dict[str, str] | None = None, sa_dir: Path = SA_DIR) -> None:
        env = dict(os.environ) if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token_file = sa_dir / "token"
        self.in_cluster = bool(host and port and token_file.exists())
        self.mode: Literal["local", "kubernetes"] = "kubernetes" if self.in_cluster else "local"
        self.namespace = env.get("POD_NAMESPACE", "")
        self.selector = env.get("K8S_POD_SELECTOR", "")
        try:
            self.deployments: dict[str, str] = json.loads(env.get("K8S_DEPLOYMENTS", "{}"))
        except ValueError:
            self.deployments = {}
        self.base = f"https://{host}:{port}" if self.in_cluster else ""
        self._token_file = token_file
        self._ssl = (
            ssl.create_default_context(cafile=str(sa_dir / "ca.crt")) if self.in_cluster else None
        )

    @property
    def scale_why(self) -> str | None:
        """Why scaling is unavailable here (None: it is available): the page disables its
        buttons with this text, and a scale request is refused with it."""
        if not self.in_cluster:
            return (
                "scaling needs the Kubernetes API: run the dashboard in the cluster "
                "(locally, use `fraudpipe run --replicas STAGE=N`)"
            )
        needs = (("K8S_DEPLOYMENTS", self.deployments), ("POD_NAMESPACE", self.namespace))
        missing = [name for name, value in needs if not value]
        if missing:
            return (
                f"scaling needs {' and '.join(missing)} in the dashboard's environment "
                "(the chart sets them)"
            )
        return None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                # Re-read each call: the kubelet rotates projected tokens.
                "Authorization": f"Bearer {self._token_file.read_text().strip()}",
                "Accept": "application/json",
                "Content-Type": "application/merge-patch+json",
            },
        )
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S, context=self._ssl) as resp:
            return json.loads(resp.read())

    def pod_metrics(self) -> PodMetrics:
        if not self.in_cluster:
            return PodMetrics("not in a cluster", "running outside Kubernetes: no pod metrics")
        query = urllib.parse.urlencode({"labelSelector": self.selector})
        path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{self.namespace}/pods?{query}"
        try:
            doc = self._call("GET", path)
        except urllib.error.HTTPError as exc:
            return PodMetrics("unavailable", f"metrics API answered {exc.code} {exc.reason}")
        except (OSError, ValueError) as exc:
            return PodMetrics("unavailable", f"metrics API unreachable: {exc}")
        by_pod = {}
        for item in doc.get("items", []):
            containers = item.get("containers", [])
            by_pod[item["metadata"]["name"]] = {
                "cpu_millicores": round(
                    sum(_quantity(c["usage"]["cpu"]) for c in containers) * 1000, 1
                ),
                "memory_bytes": int(sum(_quantity(c["usage"]["memory"]) for c in containers)),
            }
        return PodMetrics("available", None, by_pod)

    def scale(self, stage: str, replicas: int) -> str:
        why = self.scale_why
        if why is not None:
            raise ScaleError(why)
        name = self.deployments.get(stage)
        if name is None:
            raise ScaleError(f"stage {stage!r} has no Deployment in this release", 422)
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/scale"
        try:
            self._call("PATCH", path, {"spec": {"replicas": replicas}})
        except urllib.error.HTTPError as exc:
            raise ScaleError(f"Kubernetes refused: {exc.code} {exc.reason}", 502) from exc
        except OSError as exc:
            raise ScaleError(f"Kubernetes API unreachable: {exc}", 502) from exc
        return f"{name} scaled to {replicas}"
