# Shared by the hack/ scripts: where things live, logging, root.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Survives between runs when the folder does: the Kubernetes build and the base image.
CACHE="${FRAUDPIPE_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fraudpipe-e2e}"
# One cluster's state: certificates, configs, logs, PIDs, the volume. Removed by cluster-down.
RUN="${FRAUDPIPE_E2E_RUN:-/var/tmp/fraudpipe-e2e}"
KUBE_BIN="$CACHE/kubernetes/bin"
# The private bridge and pod network (no route leaves the machine: ipMasq is off).
BRIDGE="fpe2e0"
POD_CIDR="10.223.0.0/24"
NODE_IP="10.223.0.1"
SERVICE_CIDR="10.224.0.0/24"

log() { printf '%s e2e: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A kubelet, containerd, bridges and iptables need root: come back through sudo when not.
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "needs root (or sudo): it runs a kubelet, containerd and a bridge"
  exec sudo -E bash "$0" "$@"
fi

# What the scripts add to the host outside $CACHE and $RUN, for hack/clean.sh to take back: the
# packages apt_install installed (never those that were there before) and the deb-src entry.
HOST_STATE="/var/lib/fraudpipe-e2e"
DEB_SRC="/etc/apt/sources.list.d/fraudpipe-e2e-src.sources"

# apt_install PKG...: install what is missing, quietly, and record it in $HOST_STATE/packages.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  mkdir -p "$HOST_STATE" && printf '%s\n' "${missing[@]}" >>"$HOST_STATE/packages"
}
