#!/usr/bin/env bash
# Build the images the cluster runs, with podman and no registry:
#   - a Debian bookworm base made with debootstrap (cached as a tarball),
#   - the project's real Dockerfile, cpu target, on that base: localhost/fraudpipe:e2e,
#   - a pause image for the pod sandboxes (busybox sleeping): localhost/pause:e2e,
# and save both as OCI archives in $RUN/images for cluster-up to import into containerd.
source "$(dirname "$0")/lib.sh"

apt_install podman runc debootstrap busybox-static ca-certificates
mkdir -p "$CACHE/containers" "$RUN/images"

# podman as CI can run it: runc, cgroupfs, lowered ulimits; its own storage in the cache.
cat >"$CACHE/containers/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$CACHE/containers/containers.conf"
pm() { podman --root "$CACHE/containers/storage" --runroot "$CACHE/containers/run" "$@"; }

base=localhost/fraudpipe-e2e-base:bookworm
if ! pm image exists "$base"; then
  tarball="$CACHE/base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    log "debootstrap bookworm (python3, python3-venv)"
    rootfs="$CACHE/rootfs.tmp"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  pm import --quiet "$tarball" "$base" >/dev/null
fi

if ! pm image exists localhost/pause:e2e; then
  log "pause image"
  pause="$CACHE/pause.tmp"
  rm -rf "$pause" && mkdir -p "$pause/bin"
  cp /bin/busybox "$pause/bin/busybox"
  tar -C "$pause" -c . | pm import --quiet --change 'ENTRYPOINT ["/bin/busybox", "sleep", "2147483647"]' - localhost/pause:e2e >/dev/null
  rm -rf "$pause"
fi

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")"
log "podman build --target cpu (fraudpipe $version) on $base"
start=$SECONDS
# pip inside the build trusts what the host trusts (CI networks may intercept TLS).
ca=/etc/ssl/certs/ca-certificates.crt
pip_env=()
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
  [ -n "${!v:-}" ] && pip_env+=(--build-arg "$v=${!v}")
done
pm build --quiet --target cpu --build-arg CPU_BASE="$base" --build-arg VERSION="$version" \
  --build-arg PIP_CERT=/run/host-ca.pem -v "$ca:/run/host-ca.pem:ro" "${pip_env[@]}" \
  -t localhost/fraudpipe:e2e "$REPO" >"$RUN/images/build.log" 2>&1 \
  || { tail -40 "$RUN/images/build.log" >&2; die "image build failed (log: $RUN/images/build.log)"; }
log "built in $((SECONDS - start)) s"

for image in fraudpipe pause; do
  rm -f "$RUN/images/$image.tar"
  pm save --quiet --format oci-archive -o "$RUN/images/$image.tar" "localhost/$image:e2e"
done
log "saved $(du -sh "$RUN/images" | cut -f1) of images in $RUN/images"
