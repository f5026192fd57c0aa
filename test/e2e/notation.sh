#!/usr/bin/env bash
# Notary Project signatures end to end. Images on two real registries
# (distribution 2.8 without the referrers API, olareg with it) are signed
# with cosign v3 (a key) and with notation-go (test/e2e/notationsign: the
# signer notation itself uses, pushing the signature as a referrer with
# oras-go, or into the sha256-<hex> fallback index where the registry has
# no referrers API; the notation CLI cannot be built from the Go module
# proxy), then pulled through a real `portcullis serve` by crane and by
# containerd (hosts.toml from `portcullis mirror-config`, with the real
# registries' names, so a fallback past the proxy would show) under three
# boundaries:
#
#   cosign/**  needs the cosign key
#   notary/**  needs a notation signature by the release identity
#   both/**    needs both (threshold 2)
#
# Denied, each with its reason: an image signed only with notation under
# "both", one signed by a CA nobody trusts, one by a trusted CA but another
# identity, and one carrying a signature copied from its neighbour.
# notation-go's own notation.Verify must agree with the proxy on the
# notation-only cases. Prints "notation: N passed, M failed". Each run owns
# its processes and ports (see lib.sh); KEEP=1 keeps the work directory.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-notation.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export HOME="$work/home" TUF_ROOT="$work/tuf" COSIGN_PASSWORD=""
mkdir -p "$HOME" "$work/payload"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
for tool in docker-registry olareg containerd ctr crane cosign3 curl go; do
  command -v "$tool" >/dev/null || { echo "no $tool (test/e2e/install.sh)" >&2; rm -rf "$work"; exit 2; }
done
cp "$PORTCULLIS" "$work/portcullis" && PORTCULLIS=$work/portcullis
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "work directory kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok()   { passed=$((passed+1)); printf '  ok    %s\n' "$*"; }
bad()  { failed=$((failed+1)); printf '  FAIL  %s\n' "$*"; }
phase() { printf '\n[notation] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[notation] ABORT: %s\n' "$*" >&2; exit 1; }
must() {
  local what=$1 out="$work/must.$BASHPID.out"; shift
  "$@" >"$out" 2>&1 || { show "$out" 10 >&2; die "$what failed"; }
  rm -f "$out"
}

# The signer is built from this tree once per version of its source and
# of the module's dependencies, kept under $E2E_BIN when that is writable.
phase "building the notation signer"
ns_key=$(cat "$here/notationsign/main.go" "$root/go.sum" <(go version) | sha256sum | cut -c1-16)
ns_dir=$E2E_BIN/.gobin/notationsign_$ns_key
mkdir -p "$ns_dir" 2>/dev/null && [ -w "$ns_dir" ] || ns_dir=$work
if [ ! -x "$ns_dir/notationsign" ]; then
  must "go build notationsign" sh -c "cd '$root' && go build -o '$ns_dir/notationsign.tmp' ./test/e2e/notationsign && mv '$ns_dir/notationsign.tmp' '$ns_dir/notationsign'"
fi
NS=$ns_dir/notationsign

# image KEY REG REPO: pushes REPO:v1, a one-layer linux/amd64 OCI image of
# fresh random bytes, and records its digest in D[KEY].
declare -A D
image() {
  local k=$1 reg=$2 repo=$3 out
  mkdir -p "$work/payload/$k"
  head -c 4096 /dev/urandom > "$work/payload/$k/blob.bin"
  tar -C "$work/payload/$k" -cf "$work/payload/$k.tar" blob.bin
  must "crane append $reg/$repo" crane append --oci-empty-base -f "$work/payload/$k.tar" -t "$reg/$repo:v1"
  out=$(crane mutate --set-platform linux/amd64 "$reg/$repo:v1" 2>"$work/must.out") || { show "$work/must.out"; die "crane mutate $reg/$repo failed"; }
  D[$k]=${out##*@}
  [[ ${D[$k]} == sha256:* ]] || die "crane mutate $reg/$repo printed no digest: $out"
}

phase "registries (run $RUN)"
cat > "$work/dist.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $work/dist}
http:
  addr: 127.0.0.1:0
YML
docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 & dist_pid=$!; pids+=($dist_pid)
olareg serve --addr 127.0.0.1 --port 0 --store-type mem >"$work/ola.log" 2>&1 & ola_pid=$!; pids+=($ola_pid)
DIST=127.0.0.1:$(await_port "$dist_pid" docker-registry) || die "docker-registry did not start: $(tail -3 "$work/dist.log")"
OLA=127.0.0.1:$(await_port "$ola_pid" olareg) || die "olareg did not start: $(tail -3 "$work/ola.log")"
for r in "dist $dist_pid $DIST" "ola $ola_pid $OLA"; do
  set -- $r
  owns_port "$2" "${3##*:}" || die "$1: port ${3##*:} is not held by PID $2"
  wait_http "http://$3/v2/" || die "$1 at $3 does not answer /v2/"
  image "marker_$1" "$3" "e2e/marker-$RUN"
  [ "$(crane digest "$3/e2e/marker-$RUN:v1" 2>/dev/null)" = "${D[marker_$1]}" ] || die "$1 at $3 does not answer this run's marker"
done
echo "  dist $DIST (pid $dist_pid), ola $OLA (pid $ola_pid)"

phase "certificates, keys and signatures"
cd "$work" || die "cd $work"
mkdir -p certs rogue
must "notationsign certs" "$NS" certs certs release dev
must "notationsign certs (rogue CA)" "$NS" certs rogue release
must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix v3
RELEASE="x509.subject: C=US, ST=WA, O=Acme, CN=release"
cosign_sign() { must "cosign3 sign $1" cosign3 sign --key v3.key --use-signing-config=false --tlog-upload=false -y "$1"; }
# notation_sign DIR CN ENVELOPE REF: a notation signature of REF by CN of
# DIR's CA, pushed next to it.
notation_sign() { must "notationsign sign $4" "$NS" sign -plain-http -envelope "$3" "$1/$2.key" "$1/$2.chain.pem" "$4"; }

# Per registry: the image every boundary allows (signed both ways) under
# each boundary's repositories, and the ones that must be denied. The two
# signers of one subject run one after the other: without the referrers
# API both extend the same fallback index.
build() { # NAME REG
  local n=$1 reg=$2 k
  for k in cosign notary both; do
    image "${n}_$k" "$reg" "$k/app"
    cosign_sign "$reg/$k/app@${D[${n}_$k]}"
    notation_sign certs release jws "$reg/$k/app@${D[${n}_$k]}"
  done
  image "${n}_notation_only" "$reg" both/notation-only
  notation_sign certs release cose "$reg/both/notation-only@${D[${n}_notation_only]}"
  image "${n}_cosign_only" "$reg" notary/cosign-only
  cosign_sign "$reg/notary/cosign-only@${D[${n}_cosign_only]}"
  image "${n}_rogue" "$reg" notary/rogue
  notation_sign rogue release jws "$reg/notary/rogue@${D[${n}_rogue]}"
  image "${n}_dev" "$reg" notary/dev
  notation_sign certs dev cose "$reg/notary/dev@${D[${n}_dev]}"
  # A signature of its neighbour, copied next to this image (below).
  image "${n}_copied" "$reg" notary/copied
  image "${n}_neighbour" "$reg" notary/neighbour
  notation_sign certs release jws "$reg/notary/neighbour@${D[${n}_neighbour]}"
}
build dist "$DIST" & b1=$!
build ola "$OLA" & b2=$!
wait "$b1" || die "signing on dist failed"
wait "$b2" || die "signing on ola failed"
# D[] set in the subshells is lost: read the digests back.
for n in dist ola; do
  reg=$DIST; [ $n = ola ] && reg=$OLA
  for k in cosign notary both; do D[${n}_$k]=$(crane digest "$reg/$k/app:v1"); done
  for k in notation-only:notation_only cosign-only:cosign_only rogue:rogue dev:dev copied:copied neighbour:neighbour; do
    repo=${k%%:*} key=${k##*:}
    case $repo in notation-only) path=both/$repo ;; *) path=notary/$repo ;; esac
    D[${n}_$key]=$(crane digest "$reg/$path:v1")
  done
done
# The neighbour's notation signature pushed again as a signature of the
# copied image: the envelope still signs the neighbour.
for n in dist ola; do
  reg=$DIST; [ $n = ola ] && reg=$OLA
  must "copy the neighbour's signature ($n)" "$NS" copy -plain-http "$reg/notary/neighbour@${D[${n}_neighbour]}" "$reg/notary/copied@${D[${n}_copied]}"
done
for k in "${!D[@]}"; do printf '  %-20s %s\n' "$k" "${D[$k]}"; done | sort

phase "portcullis"
DIST_ALIAS=dist-$RUN.e2e.local OLA_ALIAS=ola-$RUN.e2e.local
cat > "$work/portcullis.yaml" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: dist, url: "http://$DIST", aliases: [$DIST_ALIAS, "$DIST"], insecure: true}
  - {name: ola, url: "http://$OLA", aliases: [$OLA_ALIAS, "$OLA"], insecure: true}
trust:
  - {name: cosign-release, keys: [$work/v3.pub]}
  - name: acme-notary
    notation: {ca: [$work/certs/ca.pem]}
boundaries:
  - name: cosign
    match: {repositories: ["cosign/**"]}
    signatures:
      authorities: [{name: release, key: cosign-release}]
  - name: notary
    match: {repositories: ["notary/**"]}
    signatures:
      authorities:
        - {name: notary, notation: {trust: acme-notary, identities: ["$RELEASE"]}}
  - name: both
    match: {repositories: ["both/**"]}
    signatures:
      threshold: 2
      authorities:
        - {name: release, key: cosign-release}
        - {name: notary, notation: {trust: acme-notary, identities: ["$RELEASE"]}}
  - name: markers
    match: {repositories: ["e2e/**"]}
    signatures:
      authorities: [{name: release, key: cosign-release}]
unmatched: deny
log: {level: info}
YML
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
"$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=($pc_pid)
await_portcullis "$pc_pid" "$work/portcullis.log" || die "portcullis did not start"
curl -fsS "http://$PROXY/v2/$DIST_ALIAS/e2e/marker-$RUN/tags/list" 2>/dev/null | has '"v1"' || die "the proxy does not route $DIST_ALIAS to this run's registry"
echo "  proxy $PROXY, admin $ADMIN (pid $pc_pid)"

# expect_denied NAME WANT CMD...: CMD fails with a denial naming WANT.
expect_denied() {
  local n=$1 want=$2; shift 2
  if "$@" >"$work/out" 2>&1; then bad "$n (succeeded, expected a denial)"; return; fi
  if ! grep -qi 'denied' "$work/out"; then bad "$n (failed without a denial)"; show "$work/out"; return; fi
  if ! grep -qF -- "$want" "$work/out"; then bad "$n (denied without the reason \"$want\")"; show "$work/out"; return; fi
  ok "$n"
}
# pulled NAME KEY REF: crane pull through the proxy yields exactly the
# pushed manifest and layer bytes.
pulled() {
  local n=$1 k=$2 ref=$3 layer
  rm -rf "$work/oci"
  if ! crane pull --format oci "$ref" "$work/oci" >"$work/out" 2>&1; then bad "$n"; show "$work/out" 3; return; fi
  if ! [ -e "$work/oci/blobs/sha256/${D[$k]#sha256:}" ]; then bad "$n (not the pushed digest ${D[$k]})"; return; fi
  layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"][7:])' "$work/oci/blobs/sha256/${D[$k]#sha256:}")
  if ! tar -xOf "$work/oci/blobs/sha256/$layer" blob.bin | cmp -s - "$work/payload/$k/blob.bin"; then bad "$n (layer bytes differ)"; return; fi
  ok "$n"
}

R_THRESHOLD_NOTARY="threshold 2 not met: 1 authority verified (notary)"
R_UNTRUSTED="notation untrusted signer"
R_IDENTITY="notation identity not trusted"
R_COPIED="notation signature of another artifact"
R_NOT_NOTATION='accepts notation signatures'
for n in dist ola; do
  case $n in dist) A=$DIST_ALIAS; desc="distribution (fallback index)" ;; *) A=$OLA_ALIAS; desc="olareg (referrers API)" ;; esac
  P=$PROXY/$A
  phase "crane through portcullis: $desc"
  pulled "$n: cosign boundary allows the cosign-signed image" "${n}_cosign" "$P/cosign/app:v1"
  pulled "$n: notary boundary allows the notation-signed image" "${n}_notary" "$P/notary/app:v1"
  pulled "$n: both boundary allows the image signed both ways" "${n}_both" "$P/both/app:v1"
  expect_denied "$n: both boundary denies notation alone" "$R_THRESHOLD_NOTARY" crane manifest "$P/both/notation-only:v1"
  expect_denied "$n: notary boundary denies a cosign signature alone" "threshold 1 not met" crane manifest "$P/notary/cosign-only:v1"
  expect_denied "$n: notary boundary denies an untrusted CA" "$R_UNTRUSTED" crane manifest "$P/notary/rogue:v1"
  expect_denied "$n: notary boundary denies another identity" "$R_IDENTITY" crane manifest "$P/notary/dev:v1"
  expect_denied "$n: notary boundary denies a signature copied from the neighbour" "$R_COPIED" crane manifest "$P/notary/copied:v1"
done

phase "containerd through portcullis (hosts.toml)"
must "portcullis mirror-config containerd" "$PORTCULLIS" mirror-config containerd --proxy "http://$PROXY" --out "$work/certs.d" "$DIST" "$OLA"
start_containerd "$work/ctrd" || die "containerd did not start: $(tail -3 "$work/ctrd.log")"
audit_denied() { grep '"decision":"deny"' "$work/portcullis.log" | grep -F "\"digest\":\"$1\"" | has -F -- "$2"; }
for n in dist ola; do
  reg=$DIST; [ $n = ola ] && reg=$OLA
  for k in cosign notary both; do
    # The image names are the real registry's: a fallback past the proxy
    # would pull from it directly.
    if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$reg/$k/app:v1" >"$work/out" 2>&1 &&
      "${CTR[@]}" content get "${D[${n}_$k]}" >/dev/null 2>&1; then ok "$n: ctr pull under the $k boundary"
    else bad "$n: ctr pull under the $k boundary"; show "$work/out" 3; fi
  done
  if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$reg/both/notation-only:v1" >"$work/out" 2>&1; then
    bad "$n: ctr pull of the notation-only image under both (succeeded, expected a denial)"
  elif grep -q '403' "$work/out"; then ok "$n: ctr pull of the notation-only image under both denied with 403"
  else bad "$n: ctr pull of the notation-only image failed without a 403"; show "$work/out" 3; fi
  if audit_denied "${D[${n}_notation_only]}" "$R_THRESHOLD_NOTARY"; then ok "$n: the audit log names the missing cosign signature"
  else bad "$n: no audit event with \"$R_THRESHOLD_NOTARY\" for ${D[${n}_notation_only]}"; fi
done
if "${CTR[@]}" images ls -q | has notation-only; then bad "containerd stored the denied image"; else ok "containerd did not fall back to the real registries"; fi

phase "cross-check with notation-go's notation.Verify"
for n in dist ola; do
  reg=$DIST; [ $n = ola ] && reg=$OLA
  for c in "notary/app:${n}_notary:0" "both/notation-only:${n}_notation_only:0" "notary/rogue:${n}_rogue:1" "notary/dev:${n}_dev:1" "notary/copied:${n}_copied:1" "notary/cosign-only:${n}_cosign_only:1"; do
    IFS=: read -r repo key want <<<"$c"
    "$NS" verify -plain-http "$work/certs/ca.pem" "$RELEASE" "$reg/$repo@${D[$key]}" >"$work/out" 2>&1; got=$([ $? = 0 ] && echo 0 || echo 1)
    verb=accepts; [ "$want" = 1 ] && verb=refuses
    if [ "$got" = "$want" ]; then ok "$n: notation-go $verb $repo as portcullis does"
    else bad "$n: notation-go disagrees on $repo (want $want)"; show "$work/out" 3; fi
  done
done

echo
echo "notation: $passed passed, $failed failed ($(( $(date +%s) - started ))s)"
[ "$failed" -eq 0 ]
