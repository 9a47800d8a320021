"""The cluster as the e2e test sees it: kubectl against one kubeconfig and namespace, plus
the diagnostics dumped when a step fails."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(what: str, timeout_s: float, probe: Callable[[], T | None], every_s: float = 2) -> T:
    """Poll probe() until it returns something other than None/False; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class Kube:
    kubectl: str
    kubeconfig: str
    namespace: str

    def run(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        cmd = [self.kubectl, "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd[3:])} -> {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json"))

    def apply(self, *docs: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return items

    def logs(self, pod: str, *extra: str) -> str:
        return self.run("logs", pod, "--all-containers", *extra)

    def run_pod(self, pod: dict[str, Any], timeout_s: float) -> str:
        """Create a pod that runs to completion; its stdout once it Succeeded (then deleted)."""
        name = pod["metadata"]["name"]
        self.apply(pod)
        try:

            def finished() -> str | None:
                phase: str | None = self.get("pod", name)["status"].get("phase")
                return phase if phase in ("Succeeded", "Failed") else None

            phase = wait_until(f"pod {name} to finish", timeout_s, finished)
            out = self.logs(name)
            assert phase == "Succeeded", f"pod {name} {phase}:\n{out}"
            return out
        finally:
            self.run("delete", "pod", name, "--wait=false", "--ignore-not-found")

    @contextlib.contextmanager
    def port_forward(self, target: str, port: int) -> Iterator[str]:
        """`kubectl port-forward TARGET :PORT` (as the README has users do): the local URL."""
        cmd = [self.kubectl, "--kubeconfig", self.kubeconfig, "-n", self.namespace]
        proc = subprocess.Popen(
            [*cmd, "port-forward", target, f":{port}"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> PORT"
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found, f"kubectl port-forward {target}: {line!r}"
            yield f"http://127.0.0.1:{found.group(1)}"
        finally:
            proc.terminate()
            proc.communicate(timeout=10)  # reaps it and closes its stdout

    def dump(self, folder: Path) -> str:
        """Pod descriptions, events and every container's logs (current and previous), into
        folder and as one text for the test's output."""
        shutil.rmtree(folder, ignore_errors=True)  # only this failure's files
        folder.mkdir(parents=True)
        parts: dict[str, str] = {}

        def grab(name: str, *args: str) -> None:
            try:
                parts[name] = self.run(*args)
            except (AssertionError, subprocess.TimeoutExpired) as e:
                parts[name] = f"({e})"

        grab("pods", "get", "pods,deployments,pvc,services", "-o", "wide")
        grab("describe-pods", "describe", "pods")
        grab("events", "get", "events", "--sort-by=.lastTimestamp")
        try:
            names = [p["metadata"]["name"] for p in self.get("pods")["items"]]
        except AssertionError:
            names = []
        for name in names:
            grab(f"logs-{name}", "logs", name, "--all-containers", "--tail=200")
            grab(f"logs-{name}-previous", "logs", name, "--all-containers", "--previous")
        text = []
        for name, body in parts.items():
            (folder / f"{name}.txt").write_text(body)
            text.append(f"===== {name} =====\n{body}")
        return "\n".join(text)
