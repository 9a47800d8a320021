#!/usr/bin/env bash
# Build kube-apiserver, controller-manager, scheduler, kubelet and kubectl from Debian's
# `kubernetes` source package (1.20, vendored dependencies, no network for Go) into
# $CACHE/kubernetes/bin. Does nothing when that build is already there.
source "$(dirname "$0")/lib.sh"

WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubectl"
want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
have=1
for b in "${want[@]}"; do [ -x "$KUBE_BIN/$b" ] || have=0; done
if [ "$have" = 1 ]; then
  log "kubernetes binaries cached in $KUBE_BIN ($("$KUBE_BIN/kubectl" version --client --short 2>/dev/null || true))"
  exit 0
fi

if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding a deb-src entry for bookworm (apt-get source needs one)"
  tee "$DEB_SRC" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi
apt_install dpkg-dev golang-go rsync jq

src="$CACHE/kubernetes/src"
if [ ! -d "$src/build" ]; then
  log "apt-get source kubernetes"
  rm -rf "$CACHE/kubernetes/fetch" && mkdir -p "$CACHE/kubernetes/fetch"
  (cd "$CACHE/kubernetes/fetch" && apt-get source -qq kubernetes >/dev/null)
  rm -rf "$src"
  mv "$(find "$CACHE/kubernetes/fetch" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)" "$src"
  rm -rf "$CACHE/kubernetes/fetch"
fi

log "building $WHAT (about 10 minutes on 2 cores)"
start=$SECONDS
(
  cd "$src"
  export GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$CACHE/kubernetes/gocache"
  # Debian's version reads 1.20.5+really1.20.2-…: the source is the part after "really".
  version="$(dpkg-parsechangelog -S Version | sed -e 's/.*really//' -e 's/[-+~].*//')"
  export KUBE_GIT_TREE_STATE=clean KUBE_GIT_VERSION="v$version"
  make WHAT="$WHAT" >"$CACHE/kubernetes/build.log" 2>&1
) || { tail -40 "$CACHE/kubernetes/build.log" >&2; die "kubernetes build failed (log: $CACHE/kubernetes/build.log)"; }
mkdir -p "$KUBE_BIN"
for b in "${want[@]}"; do cp "$src/_output/bin/$b" "$KUBE_BIN/$b"; done
log "built in $((SECONDS - start)) s: $("$KUBE_BIN/kubectl" version --client --short 2>/dev/null || true)"
