#!/usr/bin/env bash
# `make e2e`: the chart in a real Kubernetes cluster (tests/e2e).
#   - kind and docker installed: a kind cluster "fraudpipe-e2e" (created and deleted here);
#   - otherwise (CI): a cluster built on this machine from Debian's sources (hack/*.sh), torn
#     down afterwards, pass or fail, with a check that none of its processes, network
#     devices or mounts are left.
# PYTEST (default .venv/bin/pytest) runs the test; extra arguments go to it. The body is one
# function, parsed whole before it runs, so editing this file cannot change a run under way.
set -euo pipefail
main() {
  HACK="$(cd "$(dirname "$0")" && pwd)"
  REPO="$(dirname "$HACK")"
  PYTEST="${PYTEST:-$REPO/.venv/bin/pytest}"
  export FRAUDPIPE_E2E_NAMESPACE="${FRAUDPIPE_E2E_NAMESPACE:-fraudpipe-e2e}"

  if command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && [ -z "${FRAUDPIPE_E2E_LOCAL:-}" ]; then
    cluster=fraudpipe-e2e
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")"
    kubeconfig="$(mktemp)"
    cleanup() { rc=$?; kind delete cluster --name "$cluster" || rc=1; rm -f "$kubeconfig"; exit "$rc"; }
    trap cleanup EXIT
    kind create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 120s
    docker build --target cpu --build-arg VERSION="$version" -t "fraudpipe:$version" "$REPO"
    kind load docker-image "fraudpipe:$version" --name "$cluster"
    FRAUDPIPE_E2E_KUBECONFIG="$kubeconfig" FRAUDPIPE_E2E_IMAGE="fraudpipe:$version" \
      "$PYTEST" "$REPO/tests/e2e" "$@"
    exit
  fi

  # This machine, no Docker: everything as root (the scripts come back through sudo).
  source "$HACK/lib.sh"
  t0=$SECONDS
  # Every package first (one apt at a time), then the image build (mostly downloads) beside
  # the Kubernetes build (mostly CPU).
  apt_install dpkg-dev golang-go rsync jq podman runc debootstrap busybox-static ca-certificates \
    etcd-server containerd containernetworking-plugins openssl iproute2 iptables curl
  mkdir -p "$CACHE"
  bash "$HACK/build-images.sh" >"$CACHE/build-images.log" 2>&1 &
  images=$!
  bash "$HACK/build-kube.sh"
  wait "$images" || { cat "$CACHE/build-images.log" >&2; die "building the images failed"; }
  cat "$CACHE/build-images.log" >&2
  log "builds done after $((SECONDS - t0)) s"
  # What each step printed, so that a failure ends with its own words (the cluster's logs
  # come before them, and a CI log shows its tail).
  out="$REPO/test-artifacts/e2e"
  mkdir -p "$out"
  step=cluster-up
  cleanup() {
    rc=$?
    if [ "$rc" -ne 0 ] && [ -d "$RUN/logs" ]; then
      # The cluster's own logs, before cluster-down removes them: in test-artifacts and here,
      # less the apiserver's repeated complaint about a CA bundle this cluster does not use.
      mkdir -p "$out/cluster" && cp "$RUN"/logs/*.log "$out/cluster/"
      for f in "$RUN"/logs/*.log; do
        printf '===== %s (last 20 lines) =====\n' "$f"
        grep -v 'configmap_cafile_content' "$f" | tail -n 20
      done >&2
    fi
    if [ "$rc" -ne 0 ] && [ -s "$out/$step.log" ]; then
      printf '===== e2e failed in %s: its last 60 lines (all: %s) =====\n' "$step" "$out/$step.log" >&2
      tail -n 60 "$out/$step.log" >&2
    fi
    bash "$HACK/cluster-down.sh" || rc=1
    log "e2e took $((SECONDS - t0)) s in all (exit $rc, last step $step)"
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  bash "$HACK/cluster-up.sh" 2>&1 | tee "$out/cluster-up.log"
  # The volume: a hostPath PersistentVolume on a folder owned by the pods' user.
  data="$RUN/volumes/data"
  mkdir -p "$data" && chown 10001:10001 "$data"
  step=pytest
  FRAUDPIPE_E2E_KUBECONFIG="$RUN/kubeconfig" FRAUDPIPE_E2E_KUBECTL="$KUBE_BIN/kubectl" \
    FRAUDPIPE_E2E_IMAGE=localhost/fraudpipe:e2e FRAUDPIPE_E2E_HOSTPATH="$data" \
    "$PYTEST" "$REPO/tests/e2e" "$@" 2>&1 | tee "$out/pytest.log"
  step=done
}
main "$@"
