#!/usr/bin/env bash
# End-to-end suite: real registries (distribution 2.8 without the referrers
# API, olareg with it), real signers (cosign v2 legacy .sig/.att, cosign v3
# sigstore bundles), real clients (crane, skopeo, oras, regctl, containerd)
# pulling through a real portcullis process. Prints "N passed, N failed".
#
# Every allowed pull is compared with what was pushed (manifest digest,
# layer digests, layer contents); every denial must carry its specific
# reason; real cosign and portcullis must agree both ways on the same keys.
# A step that builds, signs or attests content aborts the suite when it
# fails, since every later check would be meaningless.
#
# Each run owns its processes and ports: every server listens on a port the
# kernel picks, the port is read back from the process itself and checked
# to belong to the PID this script started, and each registry must hand
# back a random marker pushed to it, so concurrent runs do not interfere.
#
# E2E_POLICY=deny-all or allow-all runs the same checks against a proxy
# configured to deny everything (its only key signs nothing) or to allow
# everything (no boundary, unmatched: insecure-allow, no blob gating); the
# suite must then fail at least half of its checks (see selfcheck.sh).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
E2E_POLICY=${E2E_POLICY:-enforce}
export PATH="$E2E_BIN:$PATH"
case "$E2E_POLICY" in
  enforce | deny-all | allow-all) ;;
  *) echo "E2E_POLICY must be enforce, deny-all or allow-all, not \"$E2E_POLICY\"" >&2; exit 2 ;;
esac

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-e2e.XXXXXX)
# RUN names this run's upstream aliases and markers.
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export TUF_ROOT="$work/tuf" REGCTL_CONFIG="$work/regctl.json" COSIGN_PASSWORD="" HOME="$work/home"
mkdir -p "$HOME" "$work/payload"
# A private copy: a rebuild of bin/ during the run (another run's make, an
# edit) cannot swap the binary under test halfway through.
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
cp "$PORTCULLIS" "$work/portcullis" && PORTCULLIS=$work/portcullis
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok()   { passed=$((passed+1)); printf '  ok    %s\n' "$*"; }
bad()  { failed=$((failed+1)); printf '  FAIL  %s\n' "$*"; }
phase() { printf '\n[e2e] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[e2e] ABORT: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "${1:--}" | cut -d' ' -f1; }

# must WHAT CMD...: a setup step; its failure ends the suite.
must() {
  local what=$1; shift
  local out="$work/must.$BASHPID.out"
  if ! "$@" >"$out" 2>&1; then
    show "$out" 10 >&2
    die "$what failed"
  fi
  rm -f "$out"
}


# image KEY REG REPO: pushes REPO:v1, a one-layer linux/amd64 OCI image of
# fresh random bytes, and records the digest the push reported in D[KEY]
# and the layer's contents in payload/KEY/.
declare -A D
image() {
  local k=$1 reg=$2 repo=$3 tag=${4:-v1} out
  mkdir -p "$work/payload/$k"
  head -c 4096 /dev/urandom > "$work/payload/$k/blob.bin"
  tar -C "$work/payload/$k" -cf "$work/payload/$k.tar" blob.bin
  must "crane append $reg/$repo" crane append --oci-empty-base -f "$work/payload/$k.tar" -t "$reg/$repo:$tag"
  out=$(crane mutate --set-platform linux/amd64 "$reg/$repo:$tag" 2>"$work/must.out") || { show "$work/must.out"; die "crane mutate $reg/$repo failed"; }
  D[$k]=${out##*@}
  [[ ${D[$k]} == sha256:* ]] || die "crane mutate $reg/$repo printed no digest: $out"
}

# claim_registry NAME PID ADDR: ADDR is served by PID and answers with a
# marker only this run pushed.
claim_registry() {
  local name=$1 pid=$2 addr=$3 got
  owns_port "$pid" "${addr##*:}" || die "$name: port ${addr##*:} is not held by PID $pid"
  wait_http "http://$addr/v2/" || die "$name at $addr does not answer /v2/"
  image "marker_$name" "$addr" "e2e/marker-$RUN"
  got=$(crane digest "$addr/e2e/marker-$RUN:v1" 2>/dev/null) || die "$name: marker not readable"
  [ "$got" = "${D[marker_$name]}" ] || die "$name at $addr answers marker $got, pushed ${D[marker_$name]}"
}

phase "starting registries (run $RUN, policy $E2E_POLICY)"
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
claim_registry dist "$dist_pid" "$DIST"
claim_registry ola "$ola_pid" "$OLA"
# distribution stores on disk: the marker must be in this run's directory.
[ -e "$work/dist/docker/registry/v2/repositories/e2e/marker-$RUN/_manifests/tags/v1" ] || die "the marker is not in $work/dist"
echo "  dist $DIST (pid $dist_pid), ola $OLA (pid $ola_pid)"

phase "building content"
cd "$work"
# Independent signing steps run in parallel (cosign is most of the setup
# time); join waits for all of them and aborts when any failed.
bg_pids=()
spawn() { "$@" & bg_pids+=($!); }
join() {
  local p failed_jobs=0
  for p in "${bg_pids[@]}"; do wait "$p" || failed_jobs=$((failed_jobs+1)); done
  bg_pids=()
  [ "$failed_jobs" -eq 0 ] || die "$failed_jobs signing or attesting steps failed (output above)"
}
spawn must "cosign2 generate-key-pair" cosign2 generate-key-pair --output-key-prefix v2
spawn must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix v3
spawn must "cosign2 generate-key-pair (rogue)" cosign2 generate-key-pair --output-key-prefix rogue
# The proxy's own key: it signs verification summaries of what it allowed.
spawn must "cosign3 generate-key-pair (summaries)" cosign3 generate-key-pair --output-key-prefix vsa
# Keys nothing is signed with: the deny-all self-check trusts only them
# (two, as two authorities may not share a key).
spawn must "cosign2 generate-key-pair (nobody)" cosign2 generate-key-pair --output-key-prefix nobody2
spawn must "cosign3 generate-key-pair (nobody)" cosign3 generate-key-pair --output-key-prefix nobody3
# An empty trusted root: lets cosign v3 verify key-signed bundles offline.
echo '{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}' > "$work/trusted_root.json"

sign2() { spawn must "cosign2 sign $2" cosign2 sign --key "$1" --tlog-upload=false -y "$2"; }
sign3() { spawn must "cosign3 sign $2" cosign3 sign --key "$1" --use-signing-config=false --tlog-upload=false -y "$2"; }

image dist_v2 "$DIST" e2e/signed-v2
image dist_v3 "$DIST" e2e/signed-v3
image ola_v3 "$OLA" e2e/signed-v3
image ola_v2 "$OLA" e2e/signed-v2
image dist_unsigned "$DIST" e2e/unsigned
image dist_rogue "$DIST" e2e/rogue
# For a threshold of two: signed by both keys, and by one key twice (a
# legacy .sig and a bundle), which must count once.
image pair_both "$OLA" e2e/pairs/both
image pair_one "$OLA" e2e/pairs/one-key
# Two images of one repository signed with bundles only, pulled nowhere
# else: reading ahead learns from the first that the repository has no
# use for .sig and .att tags.
image bundled_a "$OLA" e2e/bundled a
image bundled_b "$OLA" e2e/bundled b
# The other way round: two images of one repository signed with cosign v2's
# .sig tags only; the first teaches that the .sig tag decides there, so
# the second is read .sig first and its index is not asked for.
image legacy_a "$OLA" e2e/legacy a
image legacy_b "$OLA" e2e/legacy b
join
sign2 v2.key "$DIST/e2e/signed-v2@${D[dist_v2]}"
sign3 v3.key "$DIST/e2e/signed-v3@${D[dist_v3]}"
sign3 v3.key "$OLA/e2e/signed-v3@${D[ola_v3]}"
sign2 v2.key "$OLA/e2e/signed-v2@${D[ola_v2]}"
sign2 rogue.key "$DIST/e2e/rogue@${D[dist_rogue]}"
sign2 v2.key "$OLA/e2e/pairs/both@${D[pair_both]}"; sign3 v3.key "$OLA/e2e/pairs/both@${D[pair_both]}"
sign2 v3.key "$OLA/e2e/pairs/one-key@${D[pair_one]}"; sign3 v3.key "$OLA/e2e/pairs/one-key@${D[pair_one]}"
sign3 v3.key "$OLA/e2e/bundled@${D[bundled_a]}"; sign3 v3.key "$OLA/e2e/bundled@${D[bundled_b]}"
sign2 v2.key "$OLA/e2e/legacy@${D[legacy_a]}"; sign2 v2.key "$OLA/e2e/legacy@${D[legacy_b]}"

# Models and datasets as CNCF ModelPack artifacts pushed with oras; the
# model's SLSA provenance (cosign attest) names its training data by digest.
DIST_ALIAS=dist-$RUN.e2e.local OLA_ALIAS=ola-$RUN.e2e.local
echo '{}' > "$work/model-config.json"
echo "{\"text\": \"the corpus $RUN\"}" > "$work/corpus.jsonl"
echo "{\"text\": \"poisoned $RUN\"}" > "$work/poisoned.jsonl"
head -c 8192 /dev/urandom > "$work/weights.bin"
# model KEY REG REPO FILE:MEDIATYPE [ORAS ARGS...]: pushes REPO:v1 with oras
# and records the digest oras reported.
model() {
  local k=$1 reg=$2 repo=$3 file=$4; shift 4
  D[$k]=$(oras push --plain-http --format go-template='{{.digest}}' "$reg/$repo:v1" \
    --artifact-type application/vnd.cncf.model.manifest.v1+json \
    --config model-config.json:application/vnd.cncf.model.config.v1+json "$@" "$file" 2>"$work/must.out") ||
    { show "$work/must.out" >&2; die "oras push $reg/$repo failed"; }
  [[ ${D[$k]} == sha256:* ]] || die "oras push $reg/$repo printed no digest: ${D[$k]}"
}
provenance() { # FILE DATASET_URI: an SLSA v1 predicate naming one dataset
  cat > "$work/$1" <<JSON
{"buildDefinition":{"buildType":"https://e2e.local/train/v1","externalParameters":{"epochs":3},
 "resolvedDependencies":[{"name":"dataset-corpus","uri":"$2"},{"name":"trainer-src","uri":"git+https://git.e2e.local/trainer@refs/heads/main","digest":{"gitCommit":"0123456789abcdef0123456789abcdef01234567"}}]},
 "runDetails":{"builder":{"id":"https://ci.e2e.local/trainer"},"metadata":{"startedOn":"$(date -u -d '-2 hour' +%FT%TZ)","finishedOn":"$(date -u -d '-1 hour' +%FT%TZ)"}}}
JSON
}
attest3() { spawn must "cosign3 attest $2" cosign3 attest --key v3.key --use-signing-config=false --tlog-upload=false --type slsaprovenance1 --predicate "$1" -y "$2"; }
attest2() { spawn must "cosign2 attest $2" cosign2 attest --key v2.key --tlog-upload=false --type slsaprovenance1 --predicate "$1" -y "$2"; }

model corpus "$OLA" e2e/datasets/corpus corpus.jsonl:application/vnd.cncf.model.dataset.v1.raw
model poisoned "$OLA" e2e/datasets/poisoned poisoned.jsonl:application/vnd.cncf.model.dataset.v1.raw
model llm "$OLA" e2e/ml/llm weights.bin:application/vnd.cncf.model.weight.v1.raw
# The same weights would give llm's digest: an annotation makes it differ.
model llm_poisoned "$OLA" e2e/ml/llm-poisoned weights.bin:application/vnd.cncf.model.weight.v1.raw --annotation "org.opencontainers.image.description=poisoned"
# A model on the registry without the referrers API, with a legacy .att,
# whose dataset lives on the other upstream.
model llm_legacy "$DIST" e2e/ml/llm-legacy weights.bin:application/vnd.cncf.model.weight.v1.raw
provenance prov-corpus.json "oci://$OLA_ALIAS/e2e/datasets/corpus@${D[corpus]}"
provenance prov-poisoned.json "oci://$OLA_ALIAS/e2e/datasets/poisoned@${D[poisoned]}"
sign3 v3.key "$OLA/e2e/datasets/corpus@${D[corpus]}"
sign3 v3.key "$OLA/e2e/ml/llm@${D[llm]}"
attest3 prov-corpus.json "$OLA/e2e/ml/llm@${D[llm]}"
sign3 v3.key "$OLA/e2e/ml/llm-poisoned@${D[llm_poisoned]}"
attest3 prov-poisoned.json "$OLA/e2e/ml/llm-poisoned@${D[llm_poisoned]}"
sign2 v2.key "$DIST/e2e/ml/llm-legacy@${D[llm_legacy]}"
attest2 prov-corpus.json "$DIST/e2e/ml/llm-legacy@${D[llm_legacy]}"
join
# SBOMs attached with oras: through the referrers API on olareg, through the
# referrers tag schema (a sha256-<hex> fallback index) on distribution.
echo "{\"spdxVersion\":\"SPDX-2.3\",\"name\":\"e2e-$RUN\"}" > "$work/sbom.spdx.json"
sbom() { # KEY SUBJECT-KEY REG REPO
  D[$1]=$(oras attach --plain-http --artifact-type application/spdx+json --format go-template --template '{{.digest}}' \
    "$3/$4@${D[$2]}" sbom.spdx.json:application/spdx+json 2>"$work/must.out") || { show "$work/must.out" >&2; die "oras attach $3/$4 failed"; }
  [[ ${D[$1]} == sha256:* ]] || die "oras attach $3/$4 printed no digest: ${D[$1]}"
}
sbom sbom_dist dist_v2 "$DIST" e2e/signed-v2
# Mirrored content: images copied (without their signatures) from
# distribution into olareg under mirror/; their signatures stay at the
# source, where signatures.repository points.
must "crane copy (mirror signed)" crane copy "$DIST/e2e/signed-v2@${D[dist_v2]}" "$OLA/mirror/e2e/signed-v2:v1"
must "crane copy (mirror unsigned)" crane copy "$DIST/e2e/unsigned@${D[dist_unsigned]}" "$OLA/mirror/e2e/unsigned:v1"
sbom sbom_ola ola_v3 "$OLA" e2e/signed-v3
sbom sbom_unsigned dist_unsigned "$DIST" e2e/unsigned
# A manifest shaped as evidence of a signed image (an in-toto statement,
# titled as a model file), under a tag a loader pulls: what someone who can
# push would move a tag to.
mkdir -p "$work/evtag" && echo "{\"_type\":\"https://in-toto.io/Statement/v1\",\"predicateType\":\"https://example.com/$RUN\"}" > "$work/evtag/weights.bin"
D[ev_tagged]=$(cd "$work/evtag" && oras attach --plain-http --artifact-type application/vnd.in-toto+json --format go-template --template '{{.digest}}' \
  "$DIST/e2e/signed-v2@${D[dist_v2]}" weights.bin:application/vnd.in-toto+json 2>"$work/must.out") || { show "$work/must.out" >&2; die "oras attach of the evidence-shaped weights failed"; }
must "oras tag of the evidence-shaped weights" oras tag --plain-http "$DIST/e2e/signed-v2@${D[ev_tagged]}" weights
# The same with bytes that are no in-toto statement, for a loader pinned to
# its digest.
mkdir -p "$work/evsmall" && echo "poisoned weights $RUN" > "$work/evsmall/weights.bin"
D[ev_small]=$(cd "$work/evsmall" && oras attach --plain-http --artifact-type application/vnd.in-toto+json --format go-template --template '{{.digest}}' \
  "$DIST/e2e/signed-v2@${D[dist_v2]}" weights.bin:application/vnd.in-toto+json 2>"$work/must.out") || { show "$work/must.out" >&2; die "oras attach of the small evidence-shaped weights failed"; }
# The same, larger than limits.served_evidence_bytes (1MiB here), for a
# loader pinned to its digest.
mkdir -p "$work/evbig" && head -c $((2 << 20)) /dev/urandom > "$work/evbig/weights.bin"
D[ev_big]=$(cd "$work/evbig" && oras attach --plain-http --artifact-type application/vnd.in-toto+json --format go-template --template '{{.digest}}' \
  "$DIST/e2e/signed-v2@${D[dist_v2]}" weights.bin:application/vnd.in-toto+json 2>"$work/must.out") || { show "$work/must.out" >&2; die "oras attach of the large evidence-shaped weights failed"; }
for k in sbom_dist sbom_ola sbom_unsigned ev_tagged ev_small ev_big dist_v2 dist_v3 ola_v3 ola_v2 dist_unsigned dist_rogue pair_both pair_one corpus poisoned llm llm_poisoned llm_legacy; do printf '  %-14s %s\n' "$k" "${D[$k]}"; done

phase "starting the alert receiver"
# A webhook receiver for portcullis's alerts: appends each POST body to a
# file, one line per event. It prints the port the kernel gave it.
cat > "$work/alert_recv.py" <<'PY'
import http.server, sys
class Recv(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 1 << 20))
        with open(sys.argv[1], "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recv)
print(srv.server_address[1], flush=True)
srv.serve_forever()
PY
: > "$work/alerts.jsonl"
python3 "$work/alert_recv.py" "$work/alerts.jsonl" >"$work/alert_recv.log" 2>&1 & recv_pid=$!; pids+=($recv_pid)
recv_port=
for _ in $(seq 200); do
  recv_port=$(head -1 "$work/alert_recv.log" | tr -dc '0-9')
  [ -n "$recv_port" ] && break
  kill -0 "$recv_pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$recv_port" ] || { show "$work/alert_recv.log" >&2; die "the alert receiver did not print its port"; }
owns_port "$recv_pid" "$recv_port" || die "alert receiver: port $recv_port is not held by PID $recv_pid"
ALERTS=127.0.0.1:$recv_port
echo "  alert receiver $ALERTS (pid $recv_pid)"

phase "starting portcullis"
upstreams="upstreams:
  - {name: dist, url: \"http://$DIST\", aliases: [$DIST_ALIAS, \"$DIST\"], insecure: true}
  - {name: ola, url: \"http://$OLA\", aliases: [$OLA_ALIAS, \"$OLA\"], insecure: true}"
policy() { # KEY_V2 KEY_V3: the suite's policy, trusting these two keys
  cat <<YML
trust:
  - {name: cosign-v2, keys: [$1]}
  - {name: cosign-v3, keys: [$2]}
boundaries:
  - name: models
    match: {repositories: ["e2e/ml/**"], artifact_types: ["application/vnd.cncf.model.manifest.v1+json"]}
    signatures:
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
    attestations:
      - name: provenance
        predicate_type: "https://slsa.dev/provenance/v1"
        authorities: [release-v2, release-v3]
        max_age: 24h
        condition: 'predicate.runDetails.builder.id == "https://ci.e2e.local/trainer"'
    lineage: {depth: 2, require: ["dataset*"]}
  - name: mirrored
    match: {repositories: ["mirror/**"]}
    signatures:
      repository: "dist/{repository}"
      repository_strip_prefix: "mirror/"
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
  - name: pairs
    match: {repositories: ["e2e/pairs/**"]}
    signatures:
      threshold: 2
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
  - name: e2e
    match: {repositories: ["e2e/**"]}
    signatures:
      threshold: 1
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
unmatched: deny
YML
}
{
  echo "listen: 127.0.0.1:0"
  echo "admin: 127.0.0.1:0"
  echo "$upstreams"
  case "$E2E_POLICY" in
    enforce) policy v2.pub v3.pub ;;
    deny-all) policy nobody2.pub nobody3.pub ;;
    allow-all) printf 'boundaries: []\nunmatched: insecure-allow\ninsecure_disable_blob_gating: true\n' ;;
  esac
  echo "summaries: {key: vsa.key, password_env: COSIGN_PASSWORD}"
  echo "alerts: [{name: e2e, type: webhook, url: \"http://$ALERTS/events\", insecure: true, events: [deny, fail-closed]}]"
  echo "log: {level: info}"
  echo "limits: {served_evidence_bytes: 1MiB}"
} > "$work/portcullis.yaml"
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
"$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=($pc_pid)
# The bound addresses are read from the process's own log, then checked
# against the sockets it holds.
await_portcullis "$pc_pid" "$work/portcullis.log" || die "portcullis did not start"
# Only this run's proxy knows the alias; tags pass through unverified.
curl -fsS "http://$PROXY/v2/$DIST_ALIAS/e2e/marker-$RUN/tags/list" 2>/dev/null | has '"v1"' || die "the proxy at $PROXY does not route $DIST_ALIAS to this run's registry"
echo "  proxy $PROXY, admin $ADMIN (pid $pc_pid)"

P_DIST=$PROXY/$DIST_ALIAS P_OLA=$PROXY/$OLA_ALIAS
upstream_of() { [ "$1" = dist ] && echo "$DIST" || echo "$OLA"; }
proxied() { [ "$1" = dist ] && echo "$P_DIST" || echo "$P_OLA"; }

# check_pulled NAME KEY MANIFEST BLOBFN: MANIFEST (a file) is the pushed
# manifest of KEY, and every layer it lists, read with "BLOBFN DIGEST",
# hashes to its descriptor's digest and unpacks to the pushed bytes.
check_pulled() {
  local n=$1 k=$2 m=$3 get=$4 dig got
  if [ ! -s "$m" ]; then bad "$n (no manifest)"; return; fi
  got=sha256:$(sha "$m")
  if [ "$got" != "${D[$k]}" ]; then bad "$n (manifest $got, pushed ${D[$k]})"; return; fi
  local layers; layers=$(python3 -c 'import json,sys; [print(l["digest"]) for l in json.load(open(sys.argv[1]))["layers"]]' "$m")
  [ -n "$layers" ] || { bad "$n (manifest lists no layers)"; return; }
  for dig in $layers; do
    if ! $get "$dig" > "$work/layer.blob" 2>"$work/out"; then bad "$n (layer $dig not pulled)"; show "$work/out" 3; return; fi
    got=sha256:$(sha "$work/layer.blob")
    if [ "$got" != "$dig" ]; then bad "$n (layer bytes hash to $got, not $dig)"; return; fi
    if [ -e "$work/payload/$k/blob.bin" ] && ! tar -xOf "$work/layer.blob" blob.bin 2>/dev/null | cmp -s - "$work/payload/$k/blob.bin"; then
      bad "$n (layer $dig does not unpack to the pushed bytes)"; return
    fi
  done
  ok "$n"
}

# oci_blob DIGEST: a blob of the OCI layout crane pulled into $work/oci.
oci_blob() { cat "$work/oci/blobs/sha256/${1#sha256:}"; }

# expect_denied NAME WANT CMD...: the command must fail and its output
# must carry the proxy's denial with the specific reason WANT (a fixed
# string), not just any failure or any denial.
expect_denied() {
  local n=$1 want=$2; shift 2
  if "$@" >"$work/out" 2>&1; then bad "$n (succeeded, expected a denial)"; return; fi
  { echo "== $n"; cat "$work/out"; } >> "$work/denials.log"
  if ! grep -qi 'denied' "$work/out"; then bad "$n (failed without a denial)"; show "$work/out"; return; fi
  if ! grep -qF -- "$want" "$work/out"; then bad "$n (denied without the reason \"$want\")"; show "$work/out"; return; fi
  ok "$n"
}

# Reasons each denial must give. The lineage chain names the model, the
# dataset it was trained on and why the dataset failed.
R_UNSIGNED="no signatures found"
R_ROGUE='does not verify with any key of authority'
R_BLIND="is not referenced by any verified manifest"
R_THRESHOLD="threshold 2 not met: 1 authority verified"
R_CHAIN="e2e/ml/llm-poisoned@${D[llm_poisoned]:0:19} ← e2e/datasets/poisoned@${D[poisoned]:0:19}: $R_UNSIGNED"

phase "crane"
for c in "dist_v2 dist signed-v2" "dist_v3 dist signed-v3" "ola_v3 ola signed-v3" "ola_v2 ola signed-v2"; do
  set -- $c; k=$1 pp=$(proxied "$2") repo=e2e/$3
  crane manifest "$pp/$repo:v1" > "$work/m.proxy" 2>"$work/out" || show "$work/out" 3
  crane_blob() { crane blob "$pp/$repo@$1"; }
  check_pulled "crane manifest+blob $2/$3: the pushed digest and layer bytes" "$k" "$work/m.proxy" crane_blob
  rm -rf "$work/oci"
  if crane pull --format oci "$pp/e2e/$3:v1" "$work/oci" >"$work/out" 2>&1; then
    idx=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/oci/index.json")
    check_pulled "crane pull $2/$3 (OCI layout): the pushed digest and layer bytes" "$k" "$work/oci/blobs/sha256/${idx#sha256:}" oci_blob
  else bad "crane pull $2/$3"; show "$work/out" 3; fi
done
expect_denied "crane: unsigned denied ($R_UNSIGNED)" "$R_UNSIGNED" crane manifest "$P_DIST/e2e/unsigned:v1"
expect_denied "crane: untrusted key denied ($R_ROGUE)" "$R_ROGUE" crane manifest "$P_DIST/e2e/rogue:v1"
blind=$(crane manifest "$DIST/e2e/unsigned:v1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["layers"][0]["digest"])')
expect_denied "crane: blind blob denied ($R_BLIND)" "$R_BLIND" crane blob "$P_DIST/e2e/unsigned@$blind"

phase "threshold of two keys (crane, oras)"
rm -rf "$work/oci"
if crane pull --format oci "$P_OLA/e2e/pairs/both:v1" "$work/oci" >"$work/out" 2>&1; then
  idx=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/oci/index.json")
  check_pulled "crane pull: signed by both keys, the pushed digest and layer bytes" pair_both "$work/oci/blobs/sha256/${idx#sha256:}" oci_blob
else bad "crane pull: signed by both keys"; show "$work/out" 3; fi
expect_denied "crane: one key signing twice counts once ($R_THRESHOLD)" "$R_THRESHOLD" crane manifest "$P_OLA/e2e/pairs/one-key:v1"
expect_denied "oras: one key signing twice counts once ($R_THRESHOLD)" "$R_THRESHOLD" oras manifest fetch --plain-http "$P_OLA/e2e/pairs/one-key:v1"

phase "signatures kept in the source repository (mirrored content)"
crane manifest "$P_OLA/mirror/e2e/signed-v2:v1" > "$work/m.proxy" 2>"$work/out" || show "$work/out" 3
mirror_blob() { crane blob "$P_OLA/mirror/e2e/signed-v2@$1"; }
check_pulled "crane: a mirror on olareg verified by its signature at the source on distribution, the pushed bytes" dist_v2 "$work/m.proxy" mirror_blob
expect_denied "crane: an unsigned mirror denied, naming where its signatures were looked up" "no signatures found in dist/e2e/unsigned" \
  crane manifest "$P_OLA/mirror/e2e/unsigned:v1"

phase "skopeo"
skopeo_check() { # NAME KEY SKOPEO-ARGS...: copy to a dir: layout and compare
  local n=$1 k=$2; shift 2
  rm -rf "$work/sk"
  if skopeo "$@" "dir:$work/sk" >"$work/out" 2>&1; then
    sk_blob() { cat "$work/sk/${1#sha256:}"; }
    check_pulled "$n" "$k" "$work/sk/manifest.json" sk_blob
  else bad "$n"; show "$work/out" 3; fi
}
skopeo_check "skopeo copy dist/signed-v2: the pushed digest and layer bytes" dist_v2 copy --src-tls-verify=false "docker://$P_DIST/e2e/signed-v2:v1"
skopeo_check "skopeo copy ola/signed-v3: the pushed digest and layer bytes" ola_v3 copy --src-tls-verify=false "docker://$P_OLA/e2e/signed-v3:v1"
rm -rf "$work/sk"
expect_denied "skopeo: unsigned denied ($R_UNSIGNED)" "$R_UNSIGNED" skopeo copy --src-tls-verify=false "docker://$P_DIST/e2e/unsigned:v1" "dir:$work/sk"

# CRI-O, podman and skopeo share containers/image and its registries.conf:
# with the generated drop-in, a pull of the REAL registry's name goes to the
# proxy and a denial is final.
"$PORTCULLIS" mirror-config crio --proxy "http://$PROXY" "$DIST=$DIST_ALIAS" > "$work/registries.conf" || die "portcullis mirror-config crio failed"
skopeo_check "registries.conf drop-in: signed pull via the proxy, the pushed bytes" dist_v2 --registries-conf "$work/registries.conf" copy "docker://$DIST/e2e/signed-v2:v1"
rm -rf "$work/sk"
expect_denied "registries.conf drop-in: unsigned denied, no fallback" "$R_UNSIGNED" skopeo --registries-conf "$work/registries.conf" copy "docker://$DIST/e2e/unsigned:v1" "dir:$work/sk"

phase "oras"
oras manifest fetch --plain-http "$P_OLA/e2e/signed-v3:v1" > "$work/m.proxy" 2>"$work/out"
oras_blob() { oras blob fetch --plain-http --output - "$P_OLA/e2e/signed-v3@$1"; }
check_pulled "oras manifest+blob fetch ola/signed-v3: the pushed digest and layer bytes" ola_v3 "$work/m.proxy" oras_blob
expect_denied "oras: untrusted key denied ($R_ROGUE)" "$R_ROGUE" oras manifest fetch --plain-http "$P_DIST/e2e/rogue:v1"
# Evidence is served to a verifier asking for it (by digest, by cosign's
# tags), never under a tag a loader pulls: oras writes whatever titled
# layer it is given. Checked before any verifier has read that evidence
# through the proxy, as an attacker would have it.
rm -rf "$work/ev-pull" && mkdir -p "$work/ev-pull"
expect_denied "oras pull by an ordinary tag of a manifest shaped as evidence of a signed image" \
  "evidence of ${D[dist_v2]} is served only when fetched by digest or by cosign's tags" \
  oras pull --plain-http -o "$work/ev-pull" "$P_DIST/e2e/signed-v2:weights"
if [ -e "$work/ev-pull/weights.bin" ]; then bad "oras pull by an ordinary tag wrote the evidence-shaped weights"; fi
# By digest evidence is served, but only up to limits.served_evidence_bytes.
expect_denied "oras pull by digest of a manifest shaped as evidence of a signed image, larger than limits.served_evidence_bytes" \
  "evidence of ${D[dist_v2]} is served only up to 1048576 bytes (limits.served_evidence_bytes)" \
  oras pull --plain-http -o "$work/ev-pull" "$P_DIST/e2e/signed-v2@${D[ev_big]}"
if [ -e "$work/ev-pull/weights.bin" ]; then bad "oras pull by digest wrote the large evidence-shaped weights"; fi
# Within that bound, only when its bytes are evidence: the small "weights"
# under an in-toto media type are no in-toto statement.
expect_denied "oras pull by digest of a manifest shaped as evidence of a signed image whose layer is not an in-toto statement" \
  "evidence of ${D[dist_v2]} is served only when its blobs are documents of the formats their media types name" \
  oras pull --plain-http -o "$work/ev-pull" "$P_DIST/e2e/signed-v2@${D[ev_small]}"
if [ -e "$work/ev-pull/weights.bin" ]; then bad "oras pull by digest wrote the small evidence-shaped weights"; fi

phase "models and lineage (oras)"
rm -rf "$work/pull" && mkdir -p "$work/pull"
if (cd "$work/pull" && oras pull --plain-http "$P_OLA/e2e/ml/llm:v1" >"$work/out" 2>&1) &&
   oras manifest fetch --plain-http "$P_OLA/e2e/ml/llm:v1" > "$work/m.proxy" 2>>"$work/out"; then
  got=sha256:$(sha "$work/m.proxy")
  if [ "$got" = "${D[llm]}" ] && cmp -s "$work/weights.bin" "$work/pull/weights.bin"; then ok "oras pull model with verified dataset lineage: the pushed digest and weights"
  else bad "oras pull model: manifest $got (pushed ${D[llm]}) or weights differ"; fi
else bad "oras pull model with verified lineage"; show "$work/out" 3; fi
if oras manifest fetch --plain-http "$P_DIST/e2e/ml/llm-legacy:v1" > "$work/m.proxy" 2>"$work/out" && [ "sha256:$(sha "$work/m.proxy")" = "${D[llm_legacy]}" ]; then
  ok "oras: model on the registry without referrers (legacy .att, cross-upstream dataset), the pushed digest"
else bad "oras: model on the registry without referrers"; show "$work/out" 3; fi
rm -rf "$work/pull-denied" && mkdir -p "$work/pull-denied"
expect_denied "oras: model trained on an unsigned dataset denied, naming the chain ($R_CHAIN)" "$R_CHAIN" oras pull --plain-http -o "$work/pull-denied" "$P_OLA/e2e/ml/llm-poisoned:v1"
if [ -z "$(ls -A "$work/pull-denied")" ]; then ok "oras: nothing of the denied model was written"
else bad "oras wrote files of the denied model: $(ls "$work/pull-denied" | tr '\n' ' ')"; fi
"$PORTCULLIS" verify --config "$work/portcullis.yaml" "$OLA_ALIAS/e2e/ml/llm-poisoned:v1" > "$work/out" 2>&1; code=$?
if [ "$code" = 1 ] && grep -qF "e2e/datasets/poisoned@${D[poisoned]}" "$work/out" && grep -qF "$R_UNSIGNED" "$work/out" && grep -q 'dataset-corpus' "$work/out"; then ok "portcullis verify prints the lineage tree and exits 1"
else bad "portcullis verify on the poisoned model (exit $code)"; show "$work/out"; fi
"$PORTCULLIS" verify --config "$work/portcullis.yaml" "$OLA_ALIAS/e2e/ml/llm:v1" > "$work/out" 2>&1; code=$?
if [ "$code" = 0 ] && grep -q 'ALLOWED' "$work/out" && grep -qF "${D[corpus]}" "$work/out"; then ok "portcullis verify allows the model, naming its verified dataset (exit 0)"
else bad "portcullis verify on the model (exit $code)"; show "$work/out"; fi

phase "regctl"
must "regctl registry set" regctl registry set --tls disabled "$PROXY"
regctl manifest get --format raw-body "$P_DIST/e2e/signed-v3:v1" > "$work/m.proxy" 2>"$work/out"
regctl_blob() { regctl blob get "$P_DIST/e2e/signed-v3" "$1"; }
check_pulled "regctl manifest+blob dist/signed-v3: the pushed digest and layer bytes" dist_v3 "$work/m.proxy" regctl_blob
expect_denied "regctl: unsigned denied ($R_UNSIGNED)" "$R_UNSIGNED" regctl manifest get "$P_DIST/e2e/unsigned:v1"

phase "containerd"
must "portcullis mirror-config containerd" "$PORTCULLIS" mirror-config containerd --proxy "http://$PROXY" --out "$work/certs.d" "$DIST" "$OLA"
start_containerd "$work/ctrd" || die "containerd did not start: $(tail -3 "$work/ctrd.log")"
# audit_denied DIGEST WANT: the proxy's audit log has a deny event for
# DIGEST whose reasons contain WANT.
audit_denied() {
  grep '"decision":"deny"' "$work/portcullis.log" | grep -F "\"digest\":\"$1\"" | has -F -- "$2"
}
# The image names are the REAL registry's: if containerd fell back to it
# after a denial, the pull would succeed.
if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$DIST/e2e/signed-v2:v1" >"$work/out" 2>&1; then
  "${CTR[@]}" content get "${D[dist_v2]}" > "$work/m.ctr" 2>/dev/null
  ctr_blob() { "${CTR[@]}" content get "$1"; }
  check_pulled "ctr pull signed via hosts.toml: the pushed digest and layer bytes" dist_v2 "$work/m.ctr" ctr_blob
else bad "ctr pull signed via hosts.toml"; show "$work/out" 3; fi
# containerd resolves with HEAD, which has no body: the denial shows as its
# 403 status; the reason is in the proxy's audit log.
if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$DIST/e2e/unsigned:v1" >"$work/out" 2>&1; then
  bad "ctr pull unsigned (succeeded, expected a denial)"
elif grep -q '403' "$work/out"; then ok "ctr pull unsigned denied with 403"
else bad "ctr pull unsigned failed without a 403"; show "$work/out" 3; fi
if audit_denied "${D[dist_unsigned]}" "$R_UNSIGNED"; then ok "the audit log records the unsigned denial with its reason"; else bad "no audit event with \"$R_UNSIGNED\" for ${D[dist_unsigned]}"; fi
if "${CTR[@]}" images ls -q | has unsigned; then bad "containerd stored the denied image"; else ok "containerd did not fall back to the real registry"; fi

phase "cross-check with cosign verify (the same keys both ways)"
# cosign_accepts REF: real cosign (either version) accepts a signature on
# REF by one of the keys the suite signs with and the proxy trusts.
cosign_accepts() {
  local key
  for key in "$work/v2.pub" "$work/v3.pub"; do
    cosign2 verify --key "$key" --insecure-ignore-tlog=true --allow-http-registry "$1" >/dev/null 2>&1 && return 0
    cosign3 verify --key "$key" --insecure-ignore-tlog=true --allow-http-registry --trusted-root "$work/trusted_root.json" "$1" >/dev/null 2>&1 && return 0
  done
  return 1
}
# builder_is ID: one of the DSSE envelopes cosign printed carries a
# statement whose provenance names builder ID.
builder_is() {
  python3 -c '
import base64, json, sys
for line in sys.stdin.read().splitlines():
    try:
        st = json.loads(base64.b64decode(json.loads(line)["payload"]))
    except (ValueError, KeyError, TypeError):
        continue
    if st.get("predicate", {}).get("runDetails", {}).get("builder", {}).get("id") == sys.argv[1]:
        sys.exit(0)
sys.exit(1)' "$1"
}
# cosign_attests REF: real cosign accepts an SLSA provenance attestation
# on REF, by a trusted key, from the expected builder.
cosign_attests() {
  local key
  for key in "$work/v2.pub" "$work/v3.pub"; do
    cosign2 verify-attestation --key "$key" --insecure-ignore-tlog=true --allow-http-registry --type slsaprovenance1 "$1" 2>/dev/null | builder_is https://ci.e2e.local/trainer && return 0
    cosign3 verify-attestation --key "$key" --insecure-ignore-tlog=true --allow-http-registry --trusted-root "$work/trusted_root.json" --type slsaprovenance1 "$1" 2>/dev/null | builder_is https://ci.e2e.local/trainer && return 0
  done
  return 1
}
proxy_code() { curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$PROXY/v2/$1/manifests/$2"; }
alias_of() { [ "$1" = dist ] && echo "$DIST_ALIAS" || echo "$OLA_ALIAS"; }
# xc_verdict NAME WANT COSIGN CODE: the cross-check's outcome as
# "ok|text" or "bad|text". WANT says what cosign must conclude, so the
# check cannot pass by both sides rejecting (or accepting) everything.
xc_verdict() {
  local n=$1 want=$2 cosign=$3 code=$4
  if [ "$cosign" != "$want" ]; then echo "bad|$n: cosign $cosign, the suite signed it so that cosign $want"
  elif [ "$cosign" = accepts ] && [ "$code" != 200 ]; then echo "bad|$n: cosign accepts, the proxy answered $code"
  elif [ "$cosign" = rejects ] && [ "$code" != 403 ]; then echo "bad|$n: cosign rejects, the proxy answered $code"
  else echo "ok|$n: cosign $cosign, proxy $code"; fi
}
# Under the signature-only boundary the rule is an equivalence: cosign
# accepts <=> the proxy allows.
xc_signature() { # KEY REG REPO WANT
  local code cosign=rejects
  code=$(proxy_code "$(alias_of "$2")/$3" "${D[$1]}")
  cosign_accepts "$(upstream_of "$2")/$3@${D[$1]}" && cosign=accepts
  xc_verdict "cross-check $1" "$4" "$cosign" "$code"
}
# Models also need provenance and a verified dataset: the proxy allows
# exactly when cosign accepts the signature, the attestation and the
# dataset the provenance names.
xc_model() { # KEY REG REPO DATASET_KEY DATASET_REPO WANT
  local code ref cosign=rejects
  code=$(proxy_code "$(alias_of "$2")/$3" "${D[$1]}")
  ref="$(upstream_of "$2")/$3@${D[$1]}"
  cosign_accepts "$ref" && cosign_attests "$ref" && cosign_accepts "$OLA/$5@${D[$4]}" && cosign=accepts
  xc_verdict "cross-check $1 (signature, provenance, dataset)" "$6" "$cosign" "$code"
}
# Rows run in parallel (each is a handful of cosign runs) and report in
# order.
mkdir -p "$work/xc"
i=0 xc_pids=()
for row in "xc_signature dist_v2 dist e2e/signed-v2 accepts" "xc_signature dist_v3 dist e2e/signed-v3 accepts" \
           "xc_signature dist_unsigned dist e2e/unsigned rejects" "xc_signature dist_rogue dist e2e/rogue rejects" \
           "xc_signature ola_v2 ola e2e/signed-v2 accepts" "xc_signature ola_v3 ola e2e/signed-v3 accepts" \
           "xc_signature corpus ola e2e/datasets/corpus accepts" "xc_signature poisoned ola e2e/datasets/poisoned rejects" \
           "xc_model llm ola e2e/ml/llm corpus e2e/datasets/corpus accepts" \
           "xc_model llm_poisoned ola e2e/ml/llm-poisoned poisoned e2e/datasets/poisoned rejects" \
           "xc_model llm_legacy dist e2e/ml/llm-legacy corpus e2e/datasets/corpus accepts"; do
  i=$((i+1))
  $row > "$work/xc/$(printf %02d $i)" 2>/dev/null & xc_pids+=($!)
done
wait "${xc_pids[@]}"
for f in "$work"/xc/*; do
  IFS='|' read -r verdict text < "$f"
  if [ "$verdict" = ok ]; then ok "$text"; else bad "${text:-cross-check row $(basename "$f") reported nothing}"; fi
done

phase "denials on every client"
# Each client, for unsigned, wrongly signed and lineage-broken content, must
# fail and show the proxy's specific reason (containerd resolves with HEAD,
# which carries no body: it shows the 403, and the audit log the reason).
for row in "unsigned|$DIST_ALIAS/e2e/unsigned:v1|$R_UNSIGNED" "rogue|$DIST_ALIAS/e2e/rogue:v1|$R_ROGUE" \
           "llm_poisoned|$OLA_ALIAS/e2e/ml/llm-poisoned:v1|$R_CHAIN"; do
  IFS='|' read -r k bad_ref want <<< "$row"
  ref="$PROXY/$bad_ref"
  expect_denied "crane $k: $want" "$want" crane manifest "$ref"
  rm -rf "$work/sk"; expect_denied "skopeo $k: $want" "$want" skopeo copy --src-tls-verify=false "docker://$ref" "dir:$work/sk"
  expect_denied "oras $k: $want" "$want" oras manifest fetch --plain-http "$ref"
  expect_denied "regctl $k: $want" "$want" regctl manifest get "$ref"
done
for row in "dist_unsigned|$DIST/e2e/unsigned:v1|$R_UNSIGNED" "dist_rogue|$DIST/e2e/rogue:v1|$R_ROGUE" \
           "llm_poisoned|$OLA/e2e/ml/llm-poisoned:v1|$R_CHAIN"; do
  IFS='|' read -r k ref want <<< "$row"
  if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$ref" >"$work/out" 2>&1; then bad "ctr $ref (succeeded)"
  elif ! grep -q 403 "$work/out"; then bad "ctr $ref failed without a 403"; show "$work/out" 3
  elif ! audit_denied "${D[$k]}" "$want"; then bad "ctr $ref: no audit event with \"$want\""
  else ok "ctr $k denied with 403, audited: $want"; fi
done
if "${CTR[@]}" images ls | grep "$DIST/e2e/signed-v2:v1" | has "${D[dist_v2]}"; then ok "containerd stored the signed image under the pushed digest"
else bad "containerd's image digest differs from the pushed one"; fi

phase "supply-chain metadata through the proxy (enforce mode)"
# Each client reads signatures, attestations and SBOMs through the proxy
# and must conclude what it concludes against the registry directly. The
# proxy must have served that metadata as evidence of the verified digest
# (audit field evidence_of), not as content of its own.
audit_evidence() { has -F "\"evidence_of\":\"$1\"" "$work/portcullis.log"; }
# same_answer NAME SUBJECT-DIGEST CMD-WITH-@REG@...: CMD must succeed both
# with @REG@ as the registry and as the proxy's name for it, and the proxy
# must record serving evidence of SUBJECT-DIGEST.
same_answer() {
  local n=$1 subj=$2 reg=$3; shift 3
  local direct=() proxied=() a
  for a in "$@"; do direct+=("${a//@REG@/$(upstream_of "$reg")}"); proxied+=("${a//@REG@/$(proxied "$reg")}"); done
  if ! "${direct[@]}" >"$work/out" 2>&1; then bad "$n (fails directly: the suite's setup is wrong)"; show "$work/out" 3; return; fi
  if ! "${proxied[@]}" >"$work/out" 2>&1; then bad "$n (fails through the proxy, succeeds directly)"; show "$work/out" 3; return; fi
  if ! audit_evidence "$subj"; then bad "$n (no evidence_of $subj in the audit log)"; return; fi
  ok "$n"
}
TR=(--trusted-root "$work/trusted_root.json")
same_answer "cosign v2 verify, legacy .sig, registry without referrers" "${D[dist_v2]}" dist \
  cosign2 verify --key v2.pub --insecure-ignore-tlog=true --allow-http-registry "@REG@/e2e/signed-v2@${D[dist_v2]}"
same_answer "cosign v2 verify, legacy .sig, registry with referrers" "${D[ola_v2]}" ola \
  cosign2 verify --key v2.pub --insecure-ignore-tlog=true --allow-http-registry "@REG@/e2e/signed-v2@${D[ola_v2]}"
same_answer "cosign v3 verify, bundle in the fallback index (no referrers API)" "${D[dist_v3]}" dist \
  cosign3 verify --key v3.pub --insecure-ignore-tlog=true --allow-http-registry "${TR[@]}" "@REG@/e2e/signed-v3@${D[dist_v3]}"
same_answer "cosign v3 verify, bundle referrer (referrers API)" "${D[ola_v3]}" ola \
  cosign3 verify --key v3.pub --insecure-ignore-tlog=true --allow-http-registry "${TR[@]}" "@REG@/e2e/signed-v3@${D[ola_v3]}"
same_answer "cosign v3 verify-attestation, SLSA provenance of a model" "${D[llm]}" ola \
  cosign3 verify-attestation --key v3.pub --insecure-ignore-tlog=true --allow-http-registry "${TR[@]}" --type slsaprovenance1 "@REG@/e2e/ml/llm@${D[llm]}"
same_answer "cosign v2 verify-attestation, legacy .att (no referrers API)" "${D[llm_legacy]}" dist \
  cosign2 verify-attestation --key v2.pub --insecure-ignore-tlog=true --allow-http-registry --type slsaprovenance1 "@REG@/e2e/ml/llm-legacy@${D[llm_legacy]}"
# A denied image's signature is denied too, naming the image.
expect_denied "cosign verify of a denied image: its signature is denied as evidence of it" "evidence of ${D[dist_rogue]}, which is denied" \
  crane manifest "$P_DIST/e2e/rogue:sha256-${D[dist_rogue]#sha256:}.sig"
if ! cosign2 verify --key rogue.pub --insecure-ignore-tlog=true --allow-http-registry "$DIST/e2e/rogue@${D[dist_rogue]}" >"$work/out" 2>&1; then
  bad "cosign verify of the rogue image with its own key fails directly (setup)"; show "$work/out" 3
elif cosign2 verify --key rogue.pub --insecure-ignore-tlog=true --allow-http-registry "$P_DIST/e2e/rogue@${D[dist_rogue]}" >"$work/out" 2>&1; then
  bad "cosign verify of the denied image through the proxy succeeded"
else ok "cosign verify of the denied image fails through the proxy (it succeeds directly with its own key)"; fi

# oras discover: the same referrers directly and through the proxy; on
# distribution the proxy synthesises them from the fallback index. The
# proxy's own verification summaries are left out of the comparison
# (they are checked in the next phase).
referrer_digests() { python3 -c '
import json, sys
def walk(n):
    for r in n.get("referrers", []) + n.get("manifests", []):
        if (r.get("annotations") or {}).get("dev.sigstore.bundle.predicateType") != "https://slsa.dev/verification_summary/v1":
            print(r["digest"])
        walk(r)
walk(json.load(sys.stdin))' | sort -u; }
for row in "dist e2e/signed-v2 dist_v2 sbom_dist" "ola e2e/signed-v3 ola_v3 sbom_ola"; do
  set -- $row
  direct=$(oras discover --plain-http --format json "$(upstream_of "$1")/$2@${D[$3]}" 2>"$work/out" | referrer_digests)
  through=$(oras discover --plain-http --format json "$(proxied "$1")/$2@${D[$3]}" 2>>"$work/out" | referrer_digests)
  if [ -z "$direct" ] || ! grep -qx "${D[$4]}" <<< "$direct"; then bad "oras discover $1/$2 directly lists no SBOM (setup)"; show "$work/out" 3
  elif [ "$direct" != "$through" ]; then bad "oras discover $1/$2: proxy lists [$(echo $through)], registry [$(echo $direct)]"
  else ok "oras discover $1/$2: the same $(wc -l <<< "$direct") referrers through the proxy, SBOM included"; fi
  rm -rf "$work/sbom-pull" && mkdir -p "$work/sbom-pull"
  if (cd "$work/sbom-pull" && oras pull --plain-http "$(proxied "$1")/$2@${D[$4]}" >"$work/out" 2>&1) &&
     cmp -s "$work/sbom.spdx.json" "$work/sbom-pull/sbom.spdx.json" && audit_evidence "${D[$3]}"; then
    ok "oras pull of the SBOM of $1/$2 through the proxy: the attached bytes, served as evidence"
  else bad "oras pull of the SBOM of $1/$2 through the proxy"; show "$work/out" 3; fi
done
rm -rf "$work/sbom-pull" && mkdir -p "$work/sbom-pull"
expect_denied "oras pull of an unsigned image's SBOM denied as evidence of it" "evidence of ${D[dist_unsigned]}, which is denied" \
  oras pull --plain-http -o "$work/sbom-pull" "$P_DIST/e2e/unsigned@${D[sbom_unsigned]}"

phase "signed verification summaries (SLSA VSA by the proxy's key)"
# vsa_passed OUTPUT: cosign printed a DSSE envelope whose statement is a
# VSA with verificationResult PASSED about digest $2.
vsa_passed() {
  python3 -c '
import base64, json, sys
for line in open(sys.argv[1]).read().splitlines():
    try:
        st = json.loads(base64.b64decode(json.loads(line)["payload"]))
    except (ValueError, KeyError, TypeError):
        continue
    p = st.get("predicate", {})
    if st.get("predicateType") == "https://slsa.dev/verification_summary/v1" and p.get("verificationResult") == "PASSED" \
       and p.get("resourceUri", "").endswith("@" + sys.argv[2]):
        sys.exit(0)
sys.exit(1)' "$1" "$2"
}
VSA_ARGS=(--insecure-ignore-tlog=true --allow-http-registry "${TR[@]}" --type https://slsa.dev/verification_summary/v1)
for row in "ola e2e/signed-v3 ola_v3" "dist e2e/signed-v3 dist_v3" "ola e2e/ml/llm llm"; do
  set -- $row
  if cosign3 verify-attestation --key vsa.pub "${VSA_ARGS[@]}" "$(proxied "$1")/$2@${D[$3]}" >"$work/out" 2>"$work/err" && vsa_passed "$work/out" "${D[$3]}"; then
    ok "cosign verify-attestation of the proxy's VSA for $1/$2: PASSED, about the pulled digest"
  else bad "cosign verify-attestation of the proxy's VSA for $1/$2"; show "$work/err" 3; fi
done
if cosign3 verify-attestation --key v3.pub "${VSA_ARGS[@]}" "$P_OLA/e2e/signed-v3@${D[ola_v3]}" >/dev/null 2>&1; then
  bad "the proxy's VSA verified with a key that did not sign it"
else ok "the proxy's VSA does not verify with another key"; fi
if cosign3 verify-attestation --key vsa.pub "${VSA_ARGS[@]}" "$P_DIST/e2e/unsigned@${D[dist_unsigned]}" >/dev/null 2>&1; then
  bad "a VSA was served for the denied unsigned image"
else ok "no VSA for the denied unsigned image"; fi
if curl -fsS "http://$ADMIN/v1/decisions/${D[ola_v3]}/summary" | python3 -c 'import json,sys; b=json.load(sys.stdin); sys.exit(not b.get("dsseEnvelope"))'; then
  ok "/v1/decisions/<digest>/summary serves the signed bundle"
else bad "/v1/decisions/<digest>/summary"; fi

phase "observability"
metric() { curl -fsS "http://$ADMIN/metrics" | awk -v s="$1" '$1 == s { v = int($2) } END { print v + 0 }'; }
saved='portcullis_evidence_tag_predictions_total{result="saved"}'
saved0=$(metric "$saved")
for k in bundled_a bundled_b; do
  crane manifest "$P_OLA/e2e/bundled@${D[$k]}" > /dev/null 2>"$work/out" || show "$work/out" 3
done
if [ "$(metric "$saved")" -gt "$saved0" ]; then
  ok "a second cold pull in a bundle-signed repository skips its .sig tag ($saved)"
else bad "no .sig or .att tag left out of reading ahead after a bundle-signed pull in the same repository"; fi
missed='portcullis_evidence_tag_predictions_total{result="missed"}'
saved0=$(metric "$saved"); missed0=$(metric "$missed")
pulled=0
for k in legacy_a legacy_b; do
  crane manifest "$P_OLA/e2e/legacy@${D[$k]}" > "$work/m.$k" 2>"$work/out" && [ "$(sha256sum < "$work/m.$k" | cut -d' ' -f1)" = "${D[$k]#sha256:}" ] \
    && pulled=$((pulled + 1)) || show "$work/out" 3
done
if [ "$pulled" = 2 ] && [ "$(metric "$saved")" -gt "$saved0" ] && [ "$(metric "$missed")" = "$missed0" ]; then
  ok "a second cold pull in a repository signed with cosign v2 .sig tags reads the tag first and not its index ($saved)"
else bad "cosign v2 .sig-signed pulls: $pulled of 2 served, nothing left out of reading ahead, or the index read after all"; fi
if curl -fsS "http://$ADMIN/metrics" | grep -E '^portcullis_decisions_total\{.*decision="deny".*\} [1-9]' >/dev/null; then ok "denials are counted in /metrics"; else bad "no deny count in /metrics"; fi
if curl -fsS "http://$ADMIN/v1/decisions" | python3 -c 'import json,sys; sys.exit(not any(d.get("digest") == sys.argv[1] and d.get("decision") == "deny" for d in json.load(sys.stdin)["decisions"]))' "${D[dist_unsigned]}"; then ok "/v1/decisions lists the unsigned denial"; else bad "/v1/decisions has no denial of ${D[dist_unsigned]}"; fi

# alert_arrived DIGEST REASON: the receiver got a deny event for DIGEST
# whose reasons include REASON.
alert_arrived() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    d = e.get("decision") or {}
    if e.get("kind") == "deny" and d.get("digest") == sys.argv[2] and any(sys.argv[3] in r for r in d.get("reasons") or []):
        sys.exit(0)
sys.exit(1)' "$work/alerts.jsonl" "$1" "$2"
}
# Alerts are sent in the background: give the receiver a few seconds.
for _ in $(seq 100); do alert_arrived "${D[dist_unsigned]}" "$R_UNSIGNED" && break; sleep 0.1; done
if alert_arrived "${D[dist_unsigned]}" "$R_UNSIGNED"; then ok "the alert webhook got the deny event for the unsigned image, with its reason"
else bad "no deny alert for ${D[dist_unsigned]} at the webhook"; show "$work/alerts.jsonl" 3; fi

phase "graceful shutdown"
kill -TERM "$pc_pid"
for _ in $(seq 100); do kill -0 "$pc_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pc_pid" 2>/dev/null; then bad "portcullis still running 10s after SIGTERM"
else wait "$pc_pid"; rc=$?
  if [ "$rc" = 0 ] && grep -q '"shutting down"' "$work/portcullis.log"; then ok "SIGTERM drains and exits 0"; else bad "SIGTERM exit code $rc"; fi
fi

phase "result"
echo "policy $E2E_POLICY: $passed passed, $failed failed in $(( $(date +%s) - started ))s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
