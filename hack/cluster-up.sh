#!/usr/bin/env bash
# Start a one-node Kubernetes cluster on this machine from the binaries build-kube.sh made:
# etcd, kube-apiserver, controller-manager, scheduler, containerd (runc, CNI bridge) and
# kubelet, listening on loopback and a private bridge only. Every process is recorded in
# $RUN/pids; cluster-down.sh stops them and removes what they created. Imports the images
# build-images.sh saved and writes $RUN/kubeconfig.
source "$(dirname "$0")/lib.sh"

apt_install etcd-server containerd runc containernetworking-plugins openssl iproute2 iptables curl
[ -x "$KUBE_BIN/kubelet" ] || die "no kubernetes build in $KUBE_BIN: run hack/build-kube.sh"
[ -s "$RUN/images/fraudpipe.tar" ] || die "no images in $RUN/images: run hack/build-images.sh"
[ -e "$RUN/pids" ] && die "a cluster is already up in $RUN (hack/cluster-down.sh stops it)"

NODE=fraudpipe-e2e
PKI="$RUN/pki"
mkdir -p "$PKI" "$RUN/pids" "$RUN/logs" "$RUN/cni/net.d" "$RUN/volumes"
# Network namespaces that exist before: cluster-down removes only the ones created after.
ip netns list 2>/dev/null | cut -d' ' -f1 | sort >"$RUN/netns.before"

# --- certificates: one CA, the apiserver, one client per component --------------------------
cert() { # cert NAME SUBJECT [SANS]
  local name=$1 subj=$2 sans=${3:-}
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
  [ -n "$sans" ] && printf 'subjectAltName=%s\n' "$sans" >>"$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 2 \
  -subj "/CN=fraudpipe-e2e-ca" 2>/dev/null
svc_ip="${SERVICE_CIDR%.*}.1"
cert apiserver "/CN=kube-apiserver" \
  "IP:$NODE_IP,IP:127.0.0.1,IP:$svc_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost"
cert admin "/O=system:masters/CN=fraudpipe-e2e-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kubelet "/O=system:nodes/CN=system:node:$NODE"
cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client"
openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

kubeconfig() { # kubeconfig NAME CERT
  cat >"$RUN/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $2}
current-context: e2e
KC
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kubelet kubelet
cp "$RUN/admin.kubeconfig" "$RUN/kubeconfig"

# start NAME CMD...: run in its own session, log to $RUN/logs, remember the PID.
start() {
  local name=$1; shift
  setsid "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/$name.pid"
  log "started $name (pid $!)"
}
# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 limit=$2; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    [ $((SECONDS - t0)) -lt "$limit" ] || die "$what not ready after ${limit}s (logs: $RUN/logs)"
    sleep 1
  done
  log "$what ready after $((SECONDS - t0)) s"
}

# --- the private bridge (the CNI plugin attaches pods to it; the apiserver listens on it) ----
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
echo "$BRIDGE" >"$RUN/netdevs"

# --- etcd, apiserver, controller-manager, scheduler ------------------------------------------
start etcd etcd --name e2e --data-dir "$RUN/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster e2e=http://127.0.0.1:23800
wait_for etcd 30 curl -sf http://127.0.0.1:23790/health

start kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:23790 \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet.crt" --kubelet-client-key="$PKI/apiserver-kubelet.key" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc \
  --authorization-mode=Node,RBAC --allow-privileged=false \
  --enable-admission-plugins=NodeRestriction,ServiceAccount,LimitRanger,ResourceQuota \
  --profiling=false
wait_for kube-apiserver 60 "$KUBE_BIN/kubectl" --kubeconfig "$RUN/kubeconfig" get --raw /readyz

start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
  --kubeconfig="$RUN/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$RUN/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$RUN/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --port=0 --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true --profiling=false
start kube-scheduler "$KUBE_BIN/kube-scheduler" \
  --kubeconfig="$RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig="$RUN/scheduler.kubeconfig" \
  --authorization-kubeconfig="$RUN/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false

# --- containerd with the CNI bridge, then the kubelet ----------------------------------------
cat >"$RUN/cni/net.d/10-fraudpipe-e2e.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "fraudpipe-e2e", "plugins": [{
  "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam",
           "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
           "routes": [{"dst": "0.0.0.0/0"}]}}]}
CNI
cat >"$RUN/containerd.toml" <<TOML
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:e2e"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
TOML
start containerd containerd --config "$RUN/containerd.toml"
ctr() { command ctr --address "$RUN/containerd/containerd.sock" -n k8s.io "$@"; }
wait_for containerd 30 ctr version
for image in pause fraudpipe; do
  ctr images import "$RUN/images/$image.tar" >/dev/null
done
# The list is read whole before it is searched: `ctr ... | grep -q` under pipefail fails when grep
# exits on its match before ctr has written its last line (SIGPIPE; it failed a CI run so).
images=$(ctr images ls -q | tr '\n' ' ')
[[ " $images " == *" localhost/fraudpipe:e2e "* ]] || die "image import: $images"
log "imported $images"

cat >"$RUN/kubelet.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
KUBELET
start kubelet "$KUBE_BIN/kubelet" --config="$RUN/kubelet.yaml" \
  --kubeconfig="$RUN/kubelet.kubeconfig" --hostname-override="$NODE" --node-ip="$NODE_IP" \
  --root-dir="$RUN/kubelet" --cert-dir="$RUN/kubelet/pki" \
  --container-runtime=remote --container-runtime-endpoint="unix://$RUN/containerd/containerd.sock" \
  --runtime-request-timeout=5m
kc() { "$KUBE_BIN/kubectl" --kubeconfig "$RUN/kubeconfig" "$@"; }
wait_for "node $NODE" 120 kc wait --for=condition=Ready "node/$NODE" --timeout=1s

# The kubernetes Service without kube-proxy: one DNAT rule to the apiserver, so pods that
# talk to the API (the dashboard) reach it. cluster-down deletes the chain.
iptables -t nat -N FRAUDPIPE-E2E
iptables -t nat -A FRAUDPIPE-E2E -d "$svc_ip/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:6443"
iptables -t nat -I PREROUTING -i "$BRIDGE" -j FRAUDPIPE-E2E
log "cluster up: KUBECONFIG=$RUN/kubeconfig"
