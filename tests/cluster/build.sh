#!/usr/bin/env bash
# Builds the test control plane's binaries from Go modules and caches them
# outside the repository, keyed by versions. A second run with the cache
# present returns in well under a second.
#
#   tests/cluster/build.sh          # build what is missing, print the bin dir
#   MODELFLOCK_CACHE=/some/dir ...  # cache root (default ~/.cache/modelflock)
set -euo pipefail

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${MODELFLOCK_CACHE:-$HOME/.cache/modelflock}"
bin="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/bin"
mkdir -p "$bin"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

log() { printf '[build] %s\n' "$*" >&2; }

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [[ ! -x "$bin/$cmd" ]]; then
    log "building $cmd $K8S_VERSION (cold builds take tens of minutes)"
    (cd "$here/gomod/k8s" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$bin/$cmd.tmp" "$bin/$cmd"
  fi
done

if [[ ! -x "$bin/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  (cd "$here/gomod/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
fi

if [[ ! -x "$bin/kwok" ]]; then
  log "installing kwok $KWOK_VERSION"
  GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi

# helm's template/lint assume Kubernetes 1.20 unless the version is stamped in at build time
# (as helm's own release builds do): stamp the control plane's version, so `helm template`
# without --kube-version renders for it. helm has its own stamp file, so changing how helm is
# built rebuilds helm alone, never the Kubernetes binaries above.
helm_stamp="helm $HELM_VERSION k8s 1.$minor"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done
if [[ ! -x "$bin/helm" || "$(cat "$bin/helm.stamp" 2>/dev/null)" != "$helm_stamp" ]]; then
  log "installing helm $HELM_VERSION (Kubernetes 1.$minor by default)"
  rm -f "$bin/helm" "$bin/helm.stamp"
  GOBIN="$bin" go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$helm_stamp" > "$bin/helm.stamp"
fi

# kwok v0.8.0 ships its stage files in the module but loads none by default.
stages="$bin/../kwok-stages"
if [[ ! -d "$stages" ]]; then
  src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [[ -d "$src" ]] || (cd /tmp && go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
  rm -rf "$stages.tmp" && mkdir -p "$stages.tmp"
  cp "$src/node/fast/node-initialize.yaml" \
     "$src/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
     "$src/pod/fast/pod-ready.yaml" "$src/pod/fast/pod-complete.yaml" \
     "$src/pod/fast/pod-delete.yaml" "$stages.tmp/"
  chmod -R u+w "$stages.tmp"
  mv "$stages.tmp" "$stages"
fi

echo "$bin"
