#!/usr/bin/env bash
# Build (once per machine and version) the control-plane binaries the test bed runs:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm,
# and the KubeVirt CRDs. Everything goes to $SOD_CACHE (outside the clone) keyed by
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
kv_dir=$SOD_CACHE/kubevirt-$KUBEVIRT_VERSION

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

# KubeVirt's CRDs come from KubeVirt's own constructors (components.NewVirtualMachineCrd & co.,
# tools/kvcrds). The components package also holds virt-operator's Deployments/DaemonSets, which
# import kubevirt.io/virt-template-api and virt-template-client-go; the Go module proxy answers
# 403 for every version of those two modules, so the package cannot be compiled as published.
# We therefore build against a copy of the kubevirt module that holds only the files the CRD
# constructors need, unchanged: go.mod, pkg/pointer and, from the components package, crds.go and
# validations_generated.go (the schemas). The copy replaces kubevirt.io/kubevirt in a build
# directory under the cache; tools/kvcrds/go.sum pins everything else.
build_kubevirt_crds() {
  if [ -s "$kv_dir/crds.yaml" ] && [ -s "$kv_dir/crds.json" ]; then step "kubevirt $KUBEVIRT_VERSION CRDs: cached"; return; fi
  step "kubevirt $KUBEVIRT_VERSION CRDs: generating from KubeVirt's own CRD constructors (cold: ~3 minutes)"
  local build=$kv_dir/build src mod
  mod=$(GOFLAGS= go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION" | python3 -c 'import json,sys;d=json.load(sys.stdin);print(d.get("Dir") or sys.exit("go mod download: "+d.get("Error","no Dir")))')
  rm -rf "$build"
  mkdir -p "$build"
  cp "$here/kvcrds/main.go" "$here/kvcrds/go.mod" "$here/kvcrds/go.sum" "$build/"
  src=$build/kubevirt-src
  local comp=pkg/virt-operator/resource/generate/components
  mkdir -p "$src/pkg/pointer" "$src/$comp"
  cp "$mod/go.mod" "$src/"
  cp "$mod/pkg/pointer/pointer.go" "$src/pkg/pointer/"
  cp "$mod/$comp/crds.go" "$mod/$comp/validations_generated.go" "$src/$comp/"
  chmod -R u+w "$src"
  (cd "$build" && go mod edit -replace "kubevirt.io/kubevirt=./kubevirt-src" \
     && CGO_ENABLED=0 go build -trimpath -o kvcrds . \
     && ./kvcrds -format yaml > "$kv_dir/crds.yaml.tmp" \
     && ./kvcrds -format json > "$kv_dir/crds.json.tmp")
  mv "$kv_dir/crds.yaml.tmp" "$kv_dir/crds.yaml"
  mv "$kv_dir/crds.json.tmp" "$kv_dir/crds.json"
  step "kubevirt CRDs: done ($kv_dir/crds.yaml)"
}

what=${1:-all}
case "$what" in
  all) build_etcd; build_kwok; build_kubevirt_crds; build_kube; build_helm ;;
  etcd) build_etcd ;; kube) build_kube ;; kwok) build_kwok ;; helm) build_helm ;; kubevirt) build_kubevirt_crds ;;
  *) echo "usage: $0 [all|etcd|kube|kwok|helm|kubevirt]" >&2; exit 2 ;;
esac
step "ready in $(( $(date +%s) - started ))s under $SOD_CACHE"
