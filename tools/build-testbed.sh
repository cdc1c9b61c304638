#!/usr/bin/env bash
# Build (once per machine and version) the control-plane binaries the test bed runs:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm,
# KubeVirt's virt-controller and virt-api with its CRDs, RBAC and webhook configurations, and
# the Kubernetes descheduler. Everything goes to $SOD_CACHE (outside the clone) keyed by
# version; a warm run only checks that the files exist.
#
# Recipe: ../shared/notes/controlplane.md (wrapper modules, ldflags, kwok stages).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
SOD_CACHE=${SOD_CACHE:-$HOME/.cache/sod-operator}
export GOFLAGS=${GOFLAGS:--mod=mod}
export GOTOOLCHAIN=local

step() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
started=$(date +%s)

# One build at a time per cache: a second invocation (another shell, a parallel `make test`)
# waits for the first and then finds everything cached.
mkdir -p "$SOD_CACHE"
exec 9>"$SOD_CACHE/.build.lock"
if ! flock -n 9; then
  step "another build-testbed.sh is building into $SOD_CACHE; waiting for it"
  flock 9
fi

k8s_bin=$SOD_CACHE/k8s-$KUBE_VERSION/bin
etcd_bin=$SOD_CACHE/etcd-$ETCD_VERSION/bin
kwok_bin=$SOD_CACHE/kwok-$KWOK_VERSION/bin
helm_bin=$SOD_CACHE/helm-$HELM_VERSION/bin
desched_bin=$SOD_CACHE/descheduler-$DESCHEDULER_VERSION/bin

build_etcd() {
  if [ -x "$etcd_bin/etcd" ]; then step "etcd $ETCD_VERSION: cached"; return; fi
  step "etcd $ETCD_VERSION: building (cold: ~1 minute)"
  mkdir -p "$etcd_bin"
  (cd "$here/etcdbin" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
      -o "$etcd_bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$etcd_bin/etcd.tmp" "$etcd_bin/etcd"
  step "etcd: done"
}

build_kube() {
  local all=1 b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [ -x "$k8s_bin/$b" ] || all=0
  done
  if [ $all = 1 ]; then step "kubernetes $KUBE_VERSION: cached"; return; fi
  step "kubernetes $KUBE_VERSION: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (cold: ~8 minutes on 2 cores, measured)"
  local maj=1 min
  min=$(echo "$KUBE_VERSION" | cut -d. -f2)
  local v="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=$maj -X k8s.io/component-base/version.gitMinor=$min -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$maj -X k8s.io/client-go/pkg/version.gitMinor=$min -X k8s.io/client-go/pkg/version.gitTreeState=clean"
  mkdir -p "$k8s_bin.tmp"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    if [ -x "$k8s_bin/$b" ]; then continue; fi
    step "kubernetes: go build $b"
    (cd "$here/k8sbins" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest \
        -ldflags "-s -w -buildid= $v" -o "$k8s_bin.tmp/$b" "k8s.io/kubernetes/cmd/$b")
    mkdir -p "$k8s_bin"
    mv "$k8s_bin.tmp/$b" "$k8s_bin/$b"
  done
  rmdir "$k8s_bin.tmp" 2>/dev/null || true
  step "kubernetes: done"
}

build_kwok() {
  if [ -x "$kwok_bin/kwok" ] && [ -f "$kwok_bin/stages.yaml" ]; then step "kwok $KWOK_VERSION: cached"; return; fi
  step "kwok $KWOK_VERSION: go install (cold: ~3 minutes)"
  mkdir -p "$kwok_bin"
  GOFLAGS= GOBIN="$kwok_bin" CGO_ENABLED=0 go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok v0.8 refuses to start without Stage objects; take the upstream defaults.
  local src
  src=$(GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  local s=$src/kustomize/stage
  {
    cat "$s/node/fast/node-initialize.yaml"; echo '---'
    cat "$s/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"; echo '---'
    cat "$s/pod/fast/pod-ready.yaml"; echo '---'
    cat "$s/pod/fast/pod-complete.yaml"; echo '---'
    cat "$s/pod/fast/pod-delete.yaml"
  } > "$kwok_bin/stages.yaml.tmp"
  mv "$kwok_bin/stages.yaml.tmp" "$kwok_bin/stages.yaml"
  step "kwok: done"
}

build_helm() {
  if [ -x "$helm_bin/helm" ]; then step "helm $HELM_VERSION: cached"; return; fi
  step "helm $HELM_VERSION: go install (cold: ~4 minutes)"
  mkdir -p "$helm_bin"
  local min
  min=$(echo "$KUBE_VERSION" | cut -d. -f2)
  GOFLAGS= GOBIN="$helm_bin" CGO_ENABLED=0 go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$min" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  step "helm: done"
}

# tree_hash DIR: a short hash of every file under DIR but its READMEs, so any change to a
# wrapper module (go.mod, go.sum, stubs, generators) gives a new cache key and a rebuild.
tree_hash() {
  (cd "$1" && find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
    | sha256sum | cut -c1-12
}

# mod_info MODULE@VERSION FIELD: a field of the module proxy's .info file for that version
# (Time; Origin.Hash, the tagged commit, when the proxy gives it), read after `go mod download`.
mod_info() {
  (cd "$SOD_CACHE" && GOFLAGS= go mod download -json "$1") | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d.get("Error"): sys.exit("go mod download: " + d["Error"])
v = json.load(open(d["Info"]))
for k in sys.argv[1].split("."): v = v.get(k, {}) if isinstance(v, dict) else {}
print(v if isinstance(v, str) else "")' "$2"
}

# virt-controller and virt-api, and KubeVirt's CRDs, RBAC and virt-api webhook configurations
# written by KubeVirt's own code (tools/kubevirt/cmd/kvgen). The wrapper module tools/kubevirt
# copies KubeVirt's replace block and points the four modules the Go module proxy refuses at
# minimal local stubs (tools/kubevirt/README.md: what they stub and what does not work).
# Cache key: KubeVirt version + hash of tools/kubevirt, in the directory name
# kubevirt-<version>-<hash>; kubevirt-<version> is a symlink to the current key, the path the
# test bed reads (crds.json, rbac.json, webhooks.json, bin/virt-controller, bin/virt-api).
kv_outputs="bin/virt-controller bin/virt-api crds.yaml crds.json rbac.json webhooks.json"
build_kubevirt() {
  local key f ok=1
  key=$KUBEVIRT_VERSION-$(tree_hash "$here/kubevirt")
  local dir=$SOD_CACHE/kubevirt-$key
  for f in $kv_outputs; do [ -s "$dir/$f" ] || ok=0; done
  if [ $ok = 1 ]; then link_kubevirt "$dir"; step "kubevirt $key: cached"; return; fi
  step "kubevirt $key: building virt-controller, virt-api and generating CRDs, RBAC, webhooks (cold: ~3 minutes on 2 idle cores, 7 under load, measured)"
  local commit date
  commit=$(mod_info "kubevirt.io/kubevirt@$KUBEVIRT_VERSION" Origin.Hash)
  date=$(mod_info "kubevirt.io/kubevirt@$KUBEVIRT_VERSION" Time)
  local v=kubevirt.io/client-go/version
  local ld="-s -w -buildid= -X $v.gitVersion=$KUBEVIRT_VERSION -X $v.gitCommit=$commit -X $v.gitTreeState=clean -X $v.buildDate=$date"
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp/bin"
  # go.sum is complete (go mod tidy with the tool directives): -mod=readonly, so a build never
  # edits the repository.
  (cd "$here/kubevirt" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "$ld" \
      -o "$dir.tmp/bin/" kubevirt.io/kubevirt/cmd/virt-controller kubevirt.io/kubevirt/cmd/virt-api ./cmd/kvgen)
  step "kubevirt: generating CRDs, RBAC and webhooks with kvgen"
  "$dir.tmp/bin/kvgen" -out "$dir.tmp" -namespace kubevirt
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  link_kubevirt "$dir"
  step "kubevirt: done ($SOD_CACHE/kubevirt-$KUBEVIRT_VERSION -> $(basename "$dir"))"
}

# link_kubevirt DIR: point kubevirt-<version> at DIR (atomically; a real directory there is the
# CRD-only output of an older version of this script). Other keys are left in place: another
# worktree may be using them.
link_kubevirt() {
  local link=$SOD_CACHE/kubevirt-$KUBEVIRT_VERSION target
  target=$(basename "$1")
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then return; fi
  if [ -e "$link" ] && [ ! -L "$link" ]; then rm -rf "$link"; fi
  ln -sfn "$target" "$link.tmp"
  mv -T "$link.tmp" "$link"
}

# The Kubernetes descheduler, the baseline the benchmarks compare with (issue 15): wrapper module
# tools/descheduler with the one replace of descheduler's go.mod. Cached by version.
build_descheduler() {
  if [ -x "$desched_bin/descheduler" ]; then step "descheduler $DESCHEDULER_VERSION: cached"; return; fi
  step "descheduler $DESCHEDULER_VERSION: building (cold: ~2 minutes on 2 idle cores, 7 under load, measured)"
  local date v=sigs.k8s.io/descheduler/pkg/version
  date=$(mod_info "sigs.k8s.io/descheduler@$DESCHEDULER_VERSION" Time)
  # The form of its release builds, vYYYYMMDD-vX.Y.Z: the only one its version check parses
  # (pkg/version splitVersion); a bare vX.Y.Z logs "failed to convert Descheduler minor version".
  local tag
  tag=v$(echo "${date%%T*}" | tr -d -)-$DESCHEDULER_VERSION
  mkdir -p "$desched_bin"
  (cd "$here/descheduler" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -buildid= -X $v.version=$tag -X $v.buildDate=$date" \
      -o "$desched_bin/descheduler.tmp" sigs.k8s.io/descheduler/cmd/descheduler)
  mv "$desched_bin/descheduler.tmp" "$desched_bin/descheduler"
  step "descheduler: done"
}

what=${1:-all}
case "$what" in
  all) build_etcd; build_kwok; build_kubevirt; build_kube; build_helm; build_descheduler ;;
  etcd) build_etcd ;; kube) build_kube ;; kwok) build_kwok ;; helm) build_helm ;;
  kubevirt) build_kubevirt ;; descheduler) build_descheduler ;;
  *) echo "usage: $0 [all|etcd|kube|kwok|helm|kubevirt|descheduler]" >&2; exit 2 ;;
esac
step "ready in $(( $(date +%s) - started ))s under $SOD_CACHE"
