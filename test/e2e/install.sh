#!/usr/bin/env bash
# Installs the real peers the end-to-end suite drives: Debian's registry,
# skopeo, containerd and redis-server, and pinned Go builds of crane, oras, regctl, cosign
# v2 (legacy .sig/.att) and cosign v3 (sigstore bundles), plus olareg (a
# registry with the referrers API) and the OCI distribution-spec
# conformance suite, and containerd 2.x (containerd2, ctr2) built from its
# module. Idempotent: a tool already at the pinned
# version is not rebuilt. Binaries go to $E2E_BIN (default /usr/local/e2e/bin).
set -euo pipefail
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
mkdir -p "$E2E_BIN"
here=$(cd "$(dirname "$0")" && pwd)

phase() { printf '[install] %s %s\n' "$(date +%H:%M:%S)" "$*"; }

apt_tools() {
  if command -v docker-registry >/dev/null && command -v skopeo >/dev/null && command -v ctr >/dev/null &&
    command -v redis-server >/dev/null; then
    phase "apt tools present"; return
  fi
  phase "apt-get install docker-registry skopeo containerd redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-registry skopeo containerd redis-server >/dev/null
}

# goinst NAME PKG@VERSION: builds into a per-version directory so a version
# bump rebuilds and a repeat run is free.
goinst() {
  local name=$1 spec=$2 dir="$E2E_BIN/.gobin/${2//[\/@]/_}"
  if [ ! -x "$dir/$(basename "${spec%@*}")" ]; then
    phase "go install $spec"
    GOBIN="$dir" go install "$spec"
  fi
  ln -sf "$dir/$(basename "${spec%@*}")" "$E2E_BIN/$name"
}

olareg() {
  local dir="$E2E_BIN/.gobin/olareg_v0.2.2"
  if [ ! -x "$dir/olareg" ]; then
    phase "build olareg v0.2.2"
    GOBIN="$dir" bash -c "cd '$here/olareg' && go install github.com/olareg/olareg/cmd/olareg"
  fi
  ln -sf "$dir/olareg" "$E2E_BIN/olareg"
}

# conformance: the OCI distribution-spec conformance suite at the version
# test/e2e/conformance/go.mod pins, as the command oci-conformance.
conformance() {
  local version dir
  version=$(cd "$here/conformance" && go list -m -f '{{.Version}}' github.com/opencontainers/distribution-spec/conformance)
  dir="$E2E_BIN/.gobin/oci-conformance_$version"
  if [ ! -x "$dir/conformance" ]; then
    phase "build oci-conformance $version"
    GOBIN="$dir" bash -c "cd '$here/conformance' && go install github.com/opencontainers/distribution-spec/conformance"
  fi
  ln -sf "$dir/conformance" "$E2E_BIN/oci-conformance"
}

# containerd2: containerd and ctr 2.x built from their module, for the
# node verifier (nodeverifier.sh), as containerd2 and ctr2 next to Debian's
# containerd 1.6. no_btrfs: the btrfs snapshotter needs C headers.
containerd2() {
  local v=v2.4.2 dir="$E2E_BIN/.gobin/containerd_v2.4.2"
  if [ ! -x "$dir/containerd" ] || [ ! -x "$dir/ctr" ]; then
    phase "build containerd $v (containerd, ctr)"
    GOBIN="$dir" go install -tags no_btrfs "github.com/containerd/containerd/v2/cmd/containerd@$v" "github.com/containerd/containerd/v2/cmd/ctr@$v"
  fi
  ln -sf "$dir/containerd" "$E2E_BIN/containerd2"
  ln -sf "$dir/ctr" "$E2E_BIN/ctr2"
}

case "${1:-all}" in
  apt) apt_tools ;;
  clients)
    goinst crane github.com/google/go-containerregistry/cmd/crane@v0.22.1
    goinst oras oras.land/oras/cmd/oras@v1.3.6
    goinst regctl github.com/regclient/regclient/cmd/regctl@v0.11.7
    olareg ;;
  cosign3) goinst cosign3 github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3 ;;
  cosign2) goinst cosign2 github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5 ;;
  conformance) conformance ;;
  containerd2) containerd2 ;;
  all)
    apt_tools
    "$0" clients
    "$0" cosign2
    "$0" cosign3
    "$0" conformance
    "$0" containerd2 ;;
  *) echo "usage: $0 [apt|clients|cosign2|cosign3|conformance|containerd2|all]" >&2; exit 2 ;;
esac
phase "done ${1:-all}"
