#!/usr/bin/env bash
# End-to-end suite: real registries (distribution 2.8 without the referrers
# API, olareg with it), real signers (cosign v2 legacy .sig/.att, cosign v3
# sigstore bundles), real clients (crane, skopeo, oras, regctl, containerd)
# pulling through a real portcullis process. Prints "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

work=$(mktemp -d /tmp/portcullis-e2e.XXXXXX)
export TUF_ROOT="$work/tuf" REGCTL_CONFIG="$work/regctl.json" COSIGN_PASSWORD="" HOME="$work/home"
mkdir -p "$HOME"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# Ports on loopback only.
DIST=127.0.0.1:15101 OLA=127.0.0.1:15102 PROXY=127.0.0.1:15100 ADMIN=127.0.0.1:19100

passed=0 failed=0
ok()   { passed=$((passed+1)); printf '  ok    %s\n' "$*"; }
bad()  { failed=$((failed+1)); printf '  FAIL  %s\n' "$*"; }
phase() { printf '\n[e2e] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for $1" >&2; return 1; }

# expect_ok NAME CMD...: the command must succeed.
expect_ok() { local n=$1; shift; if "$@" >"$work/out" 2>&1; then ok "$n"; else bad "$n"; sed 's/^/        /' "$work/out" | tail -5; fi; }
# expect_denied NAME CMD...: the command must fail and its output must show
# the proxy's DENIED reason.
expect_denied() {
  local n=$1; shift
  if "$@" >"$work/out" 2>&1; then bad "$n (succeeded, expected a denial)"; return; fi
  if grep -q 'DENIED\|denied' "$work/out"; then ok "$n"; else bad "$n (failed without the DENIED reason)"; sed 's/^/        /' "$work/out" | tail -5; fi
}

phase "starting registries"
cat > "$work/dist.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $work/dist}
http:
  addr: $DIST
YML
docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 & pids+=($!)
olareg serve --addr "${OLA%:*}" --port "${OLA#*:}" --store-type mem >"$work/ola.log" 2>&1 & pids+=($!)
wait_http "http://$DIST/v2/" && wait_http "http://$OLA/v2/" || exit 1

phase "building content"
cd "$work"
# image REG REPO TAG: a small single-layer OCI image, printed as its digest.
image() {
  head -c 4096 /dev/urandom > "$work/blob.bin"
  tar -C "$work" -cf "$work/layer.tar" blob.bin
  crane append --oci-empty-base -f "$work/layer.tar" -t "$1/$2:$3" >/dev/null 2>&1 &&
  crane mutate --set-platform linux/amd64 "$1/$2:$3" >/dev/null 2>&1 &&
  crane digest "$1/$2:$3"
}
cosign2 generate-key-pair --output-key-prefix v2 >/dev/null 2>&1
cosign3 generate-key-pair --output-key-prefix v3 >/dev/null 2>&1
cosign2 generate-key-pair --output-key-prefix rogue >/dev/null 2>&1
# An empty trusted root: lets cosign v3 verify key-signed bundles offline.
echo '{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}' > "$work/trusted_root.json"

sign2() { cosign2 sign --key "$1" --tlog-upload=false -y "$2" >/dev/null 2>&1; }
sign3() { cosign3 sign --key "$1" --use-signing-config=false --tlog-upload=false -y "$2" >/dev/null 2>&1; }

declare -A D
D[dist_v2]=$(image "$DIST" e2e/signed-v2 v1);      sign2 v2.key "$DIST/e2e/signed-v2@${D[dist_v2]}"
D[dist_v3]=$(image "$DIST" e2e/signed-v3 v1);      sign3 v3.key "$DIST/e2e/signed-v3@${D[dist_v3]}"
D[ola_v3]=$(image "$OLA" e2e/signed-v3 v1);        sign3 v3.key "$OLA/e2e/signed-v3@${D[ola_v3]}"
D[ola_v2]=$(image "$OLA" e2e/signed-v2 v1);        sign2 v2.key "$OLA/e2e/signed-v2@${D[ola_v2]}"
D[dist_unsigned]=$(image "$DIST" e2e/unsigned v1)
D[dist_rogue]=$(image "$DIST" e2e/rogue v1);       sign2 rogue.key "$DIST/e2e/rogue@${D[dist_rogue]}"
for k in "${!D[@]}"; do printf '  %-14s %s\n' "$k" "${D[$k]}"; done

# Models and datasets as CNCF ModelPack artifacts pushed with oras; the
# model's SLSA provenance (cosign attest) names its training data by digest.
echo '{}' > "$work/model-config.json"
echo '{"text": "the corpus"}' > "$work/corpus.jsonl"
echo '{"text": "poisoned"}' > "$work/poisoned.jsonl"
head -c 8192 /dev/urandom > "$work/weights.bin"
oras_push() { # REG REPO FILE:MEDIATYPE
  oras push --plain-http "$1/$2:v1" --artifact-type application/vnd.cncf.model.manifest.v1+json \
    --config model-config.json:application/vnd.cncf.model.config.v1+json "$3" >/dev/null 2>&1 && crane digest "$1/$2:v1"
}
provenance() { # DATASET_URI: an SLSA v1 predicate naming one dataset
  cat > "$work/prov.json" <<JSON
{"buildDefinition":{"buildType":"https://e2e.local/train/v1","externalParameters":{"epochs":3},
 "resolvedDependencies":[{"name":"dataset-corpus","uri":"$1"},{"name":"trainer-src","uri":"git+https://git.e2e.local/trainer@refs/heads/main","digest":{"gitCommit":"0123456789abcdef0123456789abcdef01234567"}}]},
 "runDetails":{"builder":{"id":"https://ci.e2e.local/trainer"},"metadata":{"startedOn":"$(date -u -d '-2 hour' +%FT%TZ)","finishedOn":"$(date -u -d '-1 hour' +%FT%TZ)"}}}
JSON
}
attest3() { cosign3 attest --key v3.key --use-signing-config=false --tlog-upload=false --type slsaprovenance1 --predicate prov.json -y "$1" >/dev/null 2>&1; }
attest2() { cosign2 attest --key v2.key --tlog-upload=false --type slsaprovenance1 --predicate prov.json -y "$1" >/dev/null 2>&1; }

D[corpus]=$(oras_push "$OLA" e2e/datasets/corpus corpus.jsonl:application/vnd.cncf.model.dataset.v1.raw); sign3 v3.key "$OLA/e2e/datasets/corpus@${D[corpus]}"
D[poisoned]=$(oras_push "$OLA" e2e/datasets/poisoned poisoned.jsonl:application/vnd.cncf.model.dataset.v1.raw)
D[llm]=$(oras_push "$OLA" e2e/ml/llm weights.bin:application/vnd.cncf.model.weight.v1.raw)
sign3 v3.key "$OLA/e2e/ml/llm@${D[llm]}"; provenance "oci://ola.e2e.local/e2e/datasets/corpus@${D[corpus]}"; attest3 "$OLA/e2e/ml/llm@${D[llm]}"
# Same weights as llm would give the same digest: make the manifest differ.
D[llm_poisoned]=$(oras push --plain-http "$OLA/e2e/ml/llm-poisoned:v1" --artifact-type application/vnd.cncf.model.manifest.v1+json \
  --annotation "org.opencontainers.image.description=poisoned" --config model-config.json:application/vnd.cncf.model.config.v1+json \
  weights.bin:application/vnd.cncf.model.weight.v1.raw >/dev/null 2>&1 && crane digest "$OLA/e2e/ml/llm-poisoned:v1")
sign3 v3.key "$OLA/e2e/ml/llm-poisoned@${D[llm_poisoned]}"; provenance "oci://ola.e2e.local/e2e/datasets/poisoned@${D[poisoned]}"; attest3 "$OLA/e2e/ml/llm-poisoned@${D[llm_poisoned]}"
# A model on the registry without the referrers API, with a legacy .att,
# whose dataset lives on the other upstream.
D[llm_legacy]=$(oras push --plain-http "$DIST/e2e/ml/llm-legacy:v1" --artifact-type application/vnd.cncf.model.manifest.v1+json \
  --config model-config.json:application/vnd.cncf.model.config.v1+json weights.bin:application/vnd.cncf.model.weight.v1.raw >/dev/null 2>&1 && crane digest "$DIST/e2e/ml/llm-legacy:v1")
sign2 v2.key "$DIST/e2e/ml/llm-legacy@${D[llm_legacy]}"; provenance "oci://ola.e2e.local/e2e/datasets/corpus@${D[corpus]}"; attest2 "$DIST/e2e/ml/llm-legacy@${D[llm_legacy]}"
for k in corpus poisoned llm llm_poisoned llm_legacy; do printf '  %-14s %s\n' "$k" "${D[$k]}"; done

phase "starting portcullis"
cat > "$work/portcullis.yaml" <<YML
listen: $PROXY
admin: $ADMIN
upstreams:
  - {name: dist, url: "http://$DIST", aliases: [dist.e2e.local, "$DIST"], insecure: true}
  - {name: ola, url: "http://$OLA", aliases: [ola.e2e.local, "$OLA"], insecure: true}
trust:
  - {name: cosign-v2, keys: [v2.pub]}
  - {name: cosign-v3, keys: [v3.pub]}
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
  - name: e2e
    match: {repositories: ["e2e/**"]}
    signatures:
      threshold: 1
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
unmatched: deny
log: {level: info}
YML
"$PORTCULLIS" config check "$work/portcullis.yaml" || exit 1
"$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=($pc_pid)
wait_http "http://$ADMIN/readyz" || { tail -20 "$work/portcullis.log"; exit 1; }

P_DIST=$PROXY/dist.e2e.local P_OLA=$PROXY/ola.e2e.local
same_bytes() { # NAME FILE_A FILE_B
  if cmp -s "$2" "$3"; then ok "$1"; else bad "$1 (bytes differ)"; fi
}

phase "crane"
for c in "dist signed-v2" "dist signed-v3" "ola signed-v3" "ola signed-v2"; do
  set -- $c; up=$([ "$1" = dist ] && echo "$DIST" || echo "$OLA"); pp=$([ "$1" = dist ] && echo "$P_DIST" || echo "$P_OLA")
  crane manifest "$up/e2e/$2:v1" > "$work/m.direct" 2>/dev/null
  if crane manifest "$pp/e2e/$2:v1" > "$work/m.proxy" 2>"$work/out"; then
    same_bytes "crane manifest $1/$2 byte-identical" "$work/m.direct" "$work/m.proxy"
  else bad "crane manifest $1/$2"; tail -3 "$work/out"; fi
  rm -rf "$work/oci"
  expect_ok "crane pull $1/$2 (all blobs)" crane pull --format oci "$pp/e2e/$2:v1" "$work/oci"
done
expect_denied "crane: unsigned denied" crane manifest "$P_DIST/e2e/unsigned:v1"
expect_denied "crane: untrusted key denied" crane manifest "$P_DIST/e2e/rogue:v1"
expect_denied "crane: blind blob denied" crane blob "$P_DIST/e2e/unsigned@$(crane manifest "$DIST/e2e/unsigned:v1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["layers"][0]["digest"])')"

phase "skopeo"
for c in "dist signed-v2" "ola signed-v3"; do
  set -- $c; up=$([ "$1" = dist ] && echo "$DIST" || echo "$OLA"); pp=$([ "$1" = dist ] && echo "$P_DIST" || echo "$P_OLA")
  rm -rf "$work/sk"
  if skopeo copy --src-tls-verify=false "docker://$pp/e2e/$2:v1" "dir:$work/sk" >"$work/out" 2>&1; then
    crane manifest "$up/e2e/$2:v1" > "$work/m.direct"
    same_bytes "skopeo copy $1/$2 byte-identical" "$work/m.direct" "$work/sk/manifest.json"
  else bad "skopeo copy $1/$2"; tail -3 "$work/out"; fi
done
rm -rf "$work/sk"
expect_denied "skopeo: unsigned denied" skopeo copy --src-tls-verify=false "docker://$P_DIST/e2e/unsigned:v1" "dir:$work/sk"

# CRI-O, podman and skopeo share containers/image and its registries.conf:
# with the generated drop-in, a pull of the REAL registry's name goes to the
# proxy and a denial is final.
"$PORTCULLIS" mirror-config crio --proxy "http://$PROXY" "$DIST=dist.e2e.local" > "$work/registries.conf" || bad "mirror-config crio"
rm -rf "$work/sk"
if skopeo --registries-conf "$work/registries.conf" copy "docker://$DIST/e2e/signed-v2:v1" "dir:$work/sk" >"$work/out" 2>&1; then
  crane manifest "$DIST/e2e/signed-v2:v1" > "$work/m.direct"
  same_bytes "registries.conf drop-in: signed pull via proxy byte-identical" "$work/m.direct" "$work/sk/manifest.json"
else bad "registries.conf drop-in: signed pull"; tail -3 "$work/out"; fi
rm -rf "$work/sk"
expect_denied "registries.conf drop-in: unsigned denied, no fallback" skopeo --registries-conf "$work/registries.conf" copy "docker://$DIST/e2e/unsigned:v1" "dir:$work/sk"

phase "oras"
expect_ok "oras manifest fetch ola/signed-v3" oras manifest fetch --plain-http "$P_OLA/e2e/signed-v3:v1"
expect_denied "oras: rogue denied" oras manifest fetch --plain-http "$P_DIST/e2e/rogue:v1"

phase "models and lineage (oras)"
rm -rf "$work/pull" && mkdir -p "$work/pull"
if (cd "$work/pull" && oras pull --plain-http "$P_OLA/e2e/ml/llm:v1" >"$work/out" 2>&1); then
  same_bytes "oras pull model with verified dataset lineage: weights byte-identical" "$work/weights.bin" "$work/pull/weights.bin"
else bad "oras pull model with verified lineage"; tail -3 "$work/out"; fi
expect_ok "oras pull model from the registry without referrers (legacy .att, cross-upstream dataset)" oras manifest fetch --plain-http "$P_DIST/e2e/ml/llm-legacy:v1"
expect_denied "oras: model trained on an unsigned dataset denied" oras pull --plain-http -o "$work/pull" "$P_OLA/e2e/ml/llm-poisoned:v1"
if grep -q 'datasets/poisoned' "$work/out"; then ok "denial names the lineage chain"; else bad "denial does not name the dataset"; tail -3 "$work/out"; fi
"$PORTCULLIS" verify --config "$work/portcullis.yaml" "ola.e2e.local/e2e/ml/llm-poisoned:v1" > "$work/out" 2>&1; code=$?
if [ "$code" = 1 ] && grep -q 'dataset-corpus' "$work/out"; then ok "portcullis verify prints the lineage tree and exits 1"; else bad "portcullis verify on the poisoned model (exit $code)"; tail -5 "$work/out"; fi
"$PORTCULLIS" verify --config "$work/portcullis.yaml" "ola.e2e.local/e2e/ml/llm:v1" > "$work/out" 2>&1; code=$?
if [ "$code" = 0 ]; then ok "portcullis verify allows the model (exit 0)"; else bad "portcullis verify on the model (exit $code)"; tail -5 "$work/out"; fi

phase "regctl"
regctl registry set --tls disabled "$PROXY" >/dev/null 2>&1
regctl registry set --tls disabled "$DIST" >/dev/null 2>&1
if regctl manifest get --format raw-body "$P_DIST/e2e/signed-v3:v1" > "$work/m.proxy" 2>"$work/out"; then
  crane manifest "$DIST/e2e/signed-v3:v1" > "$work/m.direct"
  same_bytes "regctl manifest dist/signed-v3 byte-identical" "$work/m.direct" "$work/m.proxy"
else bad "regctl manifest dist/signed-v3"; tail -3 "$work/out"; fi
expect_denied "regctl: unsigned denied" regctl manifest get "$P_DIST/e2e/unsigned:v1"

phase "containerd"
"$PORTCULLIS" mirror-config containerd --proxy "http://$PROXY" --out "$work/certs.d" "$DIST" "$OLA" >/dev/null || bad "mirror-config containerd"
mkdir -p "$work/ctrd"
cat > "$work/ctrd/config.toml" <<TOML
version = 2
root = "$work/ctrd/root"
state = "$work/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctrd/containerd.sock"
TOML
containerd --config "$work/ctrd/config.toml" >"$work/ctrd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -S "$work/ctrd/containerd.sock" ] && break; sleep 0.1; done
CTR=(ctr --address "$work/ctrd/containerd.sock")
# The image names are the REAL registry's: if containerd fell back to it
# after a denial, the pull would succeed.
expect_ok "ctr pull signed via hosts.toml" "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$DIST/e2e/signed-v2:v1"
# containerd resolves with HEAD, which has no body: the denial shows as its
# 403 status; the reason is in the proxy's audit log (checked below).
if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$DIST/e2e/unsigned:v1" >"$work/out" 2>&1; then
  bad "ctr pull unsigned (succeeded, expected a denial)"
elif grep -q '403' "$work/out"; then ok "ctr pull unsigned denied with 403"
else bad "ctr pull unsigned failed without a 403"; tail -3 "$work/out"; fi
if grep '"audit"' "$work/portcullis.log" | grep 'e2e/unsigned' | grep -q '"deny"'; then ok "audit log records the unsigned denial"; else bad "no audit event for the unsigned denial"; fi
if "${CTR[@]}" images ls -q | grep -q unsigned; then bad "containerd stored the denied image"; else ok "containerd did not fall back to the real registry"; fi

phase "cross-check with cosign verify"
cosign_accepts() { # REF: accepted by either real cosign with either trusted key
  cosign2 verify --key "$work/v2.pub" --insecure-ignore-tlog=true "$1" >/dev/null 2>&1 ||
  cosign3 verify --key "$work/v3.pub" --insecure-ignore-tlog=true --trusted-root "$work/trusted_root.json" "$1" >/dev/null 2>&1 ||
  cosign3 verify --key "$work/v2.pub" --insecure-ignore-tlog=true --trusted-root "$work/trusted_root.json" "$1" >/dev/null 2>&1
}
# Policy may ask for more than a signature (lineage), so the rule is an
# implication both ways: allowed => cosign accepts; cosign rejects => denied.
for row in "dist_v2 dist e2e/signed-v2" "dist_v3 dist e2e/signed-v3" "dist_unsigned dist e2e/unsigned" "dist_rogue dist e2e/rogue" \
           "ola_v2 ola e2e/signed-v2" "ola_v3 ola e2e/signed-v3" "corpus ola e2e/datasets/corpus" "poisoned ola e2e/datasets/poisoned" \
           "llm ola e2e/ml/llm" "llm_poisoned ola e2e/ml/llm-poisoned" "llm_legacy dist e2e/ml/llm-legacy"; do
  set -- $row; k=$1 reg=$2 repo=$3
  up=$([ "$reg" = dist ] && echo "$DIST" || echo "$OLA"); alias=$reg.e2e.local
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$PROXY/v2/$alias/$repo/manifests/${D[$k]}")
  if cosign_accepts "$up/$repo@${D[$k]}"; then cosign=accepts; else cosign=rejects; fi
  if [ "$code" = 200 ] && [ "$cosign" = rejects ]; then bad "cross-check $k: proxy allowed what cosign rejects"
  elif [ "$code" != 200 ] && [ "$code" != 403 ]; then bad "cross-check $k: proxy answered $code"
  else ok "cross-check $k: proxy $code, cosign $cosign"; fi
done

phase "denials on every client"
# Each client, for unsigned, wrongly signed and lineage-broken content, must
# fail and show the proxy's DENIED reason (containerd resolves with HEAD,
# which carries no body: it shows the 403).
for bad_ref in "dist.e2e.local/e2e/unsigned:v1" "dist.e2e.local/e2e/rogue:v1" "ola.e2e.local/e2e/ml/llm-poisoned:v1"; do
  ref="$PROXY/$bad_ref"
  expect_denied "crane $bad_ref" crane manifest "$ref"
  rm -rf "$work/sk"; expect_denied "skopeo $bad_ref" skopeo copy --src-tls-verify=false "docker://$ref" "dir:$work/sk"
  expect_denied "oras $bad_ref" oras manifest fetch --plain-http "$ref"
  expect_denied "regctl $bad_ref" regctl manifest get "$ref"
done
for bad in "$DIST/e2e/unsigned:v1" "$DIST/e2e/rogue:v1" "$OLA/e2e/ml/llm-poisoned:v1"; do
  if "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$bad" >"$work/out" 2>&1; then bad "ctr $bad (succeeded)"
  elif grep -q 403 "$work/out"; then ok "ctr $bad denied with 403"; else bad "ctr $bad failed without a 403"; fi
done
if "${CTR[@]}" images ls | grep "$DIST/e2e/signed-v2:v1" | grep -q "${D[dist_v2]}"; then ok "containerd stored the signed image under the upstream's digest"
else bad "containerd's image digest differs from the upstream's"; fi

phase "observability"
if curl -fsS "http://$ADMIN/metrics" | grep -E '^portcullis_decisions_total\{.*decision="deny".*\} [1-9]' >/dev/null; then ok "denials are counted in /metrics"; else bad "no deny count in /metrics"; fi
if curl -fsS "http://$ADMIN/v1/decisions" | grep -q '"decision":"deny"'; then ok "/v1/decisions lists denials"; else bad "/v1/decisions has no denial"; fi

phase "graceful shutdown"
kill -TERM "$pc_pid"
for _ in $(seq 100); do kill -0 "$pc_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pc_pid" 2>/dev/null; then bad "portcullis still running 10s after SIGTERM"
else wait "$pc_pid"; rc=$?
  if [ "$rc" = 0 ] && grep -q '"shutting down"' "$work/portcullis.log"; then ok "SIGTERM drains and exits 0"; else bad "SIGTERM exit code $rc"; fi
fi

phase "result"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
