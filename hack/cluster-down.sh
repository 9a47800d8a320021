#!/usr/bin/env bash
# Stop the cluster cluster-up.sh started and remove everything it created: the pods'
# containers and shims, every recorded process (by PID), the pod network namespaces, the
# bridge and its veths, the iptables chain, the mounts under $RUN, then $RUN itself.
# Exits 1, listing them, if any of those is still there afterwards. Safe to run twice.
source "$(dirname "$0")/lib.sh"

[ -d "$RUN" ] || { log "nothing to stop ($RUN does not exist)"; exit 0; }
sock="$RUN/containerd/containerd.sock"
ctr() { timeout 20 ctr --address "$sock" -n k8s.io "$@"; }

# stop NAME: TERM, then KILL after 10 s.
stop() {
  local pidfile="$RUN/pids/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# The kubelet first, so nothing restarts what follows.
stop kubelet
# Every container and sandbox: kill their tasks, delete them (their shims then exit).
if [ -S "$sock" ]; then
  for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
  sleep 1
  for task in $(ctr tasks ls -q 2>/dev/null); do ctr tasks delete -f "$task" >/dev/null 2>&1 || true; done
  for c in $(ctr containers ls -q 2>/dev/null); do ctr containers delete "$c" >/dev/null 2>&1 || true; done
fi
for name in kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do stop "$name"; done
# Shims of this containerd that outlived it.
pkill -KILL -f "containerd-shim.* -address $sock" 2>/dev/null || true

# Pod network namespaces created since cluster-up (their veths go with them), the bridge.
if [ -f "$RUN/netns.before" ]; then
  for ns in $(comm -13 "$RUN/netns.before" <(ip netns list 2>/dev/null | cut -d' ' -f1 | sort)); do
    case "$ns" in cni-*) ip netns delete "$ns" 2>/dev/null || true ;; esac
  done
fi
ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
if iptables -t nat -S FRAUDPIPE-E2E >/dev/null 2>&1; then
  iptables -t nat -D PREROUTING -i "$BRIDGE" -j FRAUDPIPE-E2E 2>/dev/null || true
  iptables -t nat -F FRAUDPIPE-E2E && iptables -t nat -X FRAUDPIPE-E2E
fi
# Mounts the kubelet and containerd left (volumes, rootfs overlays, shm), deepest first.
findmnt -rn -o TARGET | grep -F "$RUN/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done

# What is left?
left=()
for f in "$RUN"/pids/*.pid; do
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && left+=("process $(basename "$f" .pid)")
done
pgrep -f "containerd-shim.* -address $sock" >/dev/null && left+=("containerd shims")
pgrep -f "$KUBE_BIN/" >/dev/null && left+=("kubernetes processes: $(pgrep -af "$KUBE_BIN/" | cut -c1-80)")
ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
[ -n "$(ip -o link show master "$BRIDGE" 2>/dev/null)" ] && left+=("veths on $BRIDGE")
iptables -t nat -S FRAUDPIPE-E2E >/dev/null 2>&1 && left+=("iptables chain FRAUDPIPE-E2E")
grep -qF "$RUN/" <<<"$(findmnt -rn -o TARGET)" && left+=("mounts under $RUN")  # no pipe: see cluster-up
if [ "${#left[@]}" -gt 0 ]; then
  printf '%s\n' "${left[@]}" | sed 's/^/  left: /' >&2
  die "cluster-down could not remove everything (kept $RUN for inspection)"
fi
rm -rf "$RUN"
log "cluster down: no process, network device, mount or chain of it is left"
