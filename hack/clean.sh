#!/usr/bin/env bash
# `make e2e-clean`: take back what `make e2e` left on this machine, after stopping any cluster
# it left running (cluster-down.sh):
#   - $CACHE (~/.cache/fraudpipe-e2e: the Kubernetes build, the base image, podman's storage;
#     several GB, kept between runs so that the next `make e2e` skips the ~10 min build),
#   - $RUN (/var/tmp/fraudpipe-e2e: a cluster's state, when a run was killed before cluster-down),
#   - the deb-src entry build-kube.sh added ($DEB_SRC),
#   - the Debian packages apt_install installed, as recorded in $HOST_STATE/packages (packages
#     that were already installed were never recorded, so they stay), then `apt-get autoremove`
#     of what those alone pulled in. E2E_CLEAN_KEEP_PACKAGES=1 keeps them.
source "$(dirname "$0")/lib.sh"

"$(dirname "$0")/cluster-down.sh"
if [ -d "$CACHE/containers/storage" ] && command -v podman >/dev/null 2>&1; then
  podman --root "$CACHE/containers/storage" --runroot "$CACHE/containers/run" \
    system reset --force >/dev/null 2>&1 || true
fi
for dir in "$CACHE" "$RUN"; do
  [ -e "$dir" ] && log "removing $dir ($(du -sh "$dir" 2>/dev/null | cut -f1))" && rm -rf "$dir"
done
if [ -f "$DEB_SRC" ]; then
  log "removing $DEB_SRC"
  rm -f "$DEB_SRC"
  apt-get update -qq || true
fi
if [ -s "$HOST_STATE/packages" ] && [ -z "${E2E_CLEAN_KEEP_PACKAGES:-}" ]; then
  mapfile -t packages < <(sort -u "$HOST_STATE/packages")
  installed=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 && installed+=("$p"); done
  if [ "${#installed[@]}" -gt 0 ]; then
    log "apt-get purge ${installed[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${installed[@]}" >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -qq >/dev/null
  fi
fi
[ -n "${E2E_CLEAN_KEEP_PACKAGES:-}" ] || rm -rf "$HOST_STATE"
log "clean: nothing of make e2e is left${E2E_CLEAN_KEEP_PACKAGES:+ but its packages ($HOST_STATE/packages)}"
