#!/usr/bin/env bash
# Real models through real loaders. A CNCF ModelPack model of MODEL_MIB
# (2048) MiB of weights in MODEL_LAYERS (4) layers, signed with cosign v3
# (a sigstore bundle) and attested with SLSA provenance, and a KitOps
# ModelKit (its model KIT_MIB (512) MiB; signed and attested with cosign
# v2, legacy .sig/.att) are pushed with oras to distribution 2.8 (no
# referrers API) and pulled through a real `portcullis serve` whose policy
# requires a signature and provenance for every model repository:
#
#   - oras pull (files written under their titles), and containerd
#     (ctr content fetch: containerd 1.6's `ctr images pull` fetches a
#     model too but then fails to unpack it, as it is not an image) routed
#     by the hosts.toml that `portcullis mirror-config` writes, with the
#     real registry's name so a fallback past the proxy would show;
#   - cold (the first pull through a fresh proxy: resolve, verify, stream)
#     and warm (the second: the verdict cached), each timed next to the same
#     pull from the registry directly, interleaved so both see the same
#     load; every byte written is checked against the pushed digests;
#   - with the verified blob cache (blob_cache) when this build accepts it,
#     and with one that cannot take the model (the proxy's files capped at
#     64 MiB with prlimit, as on a full disk): the pull must still succeed;
#   - denied: an unsigned model, a signed model without provenance, and
#     the signed model's tag moved to a manifest with one weight layer
#     swapped after signing (a new digest, so unsigned), for oras and ctr,
#     each with its reason and with no weight file or content written.
#
# Prints a table of the timings and "models: N passed, M failed". Each
# run owns its processes and ports (see lib.sh); KEEP=1 keeps the work
# directory. The timings are wall-clock times of the client command and
# the CPU time the registry and the proxy spent on it, on a machine that
# may be running other work: compare the ratios. ROUNDS (1) repeats every
# timed pull, each round with a fresh proxy, and reports the median.
# MODELS_POLICY=allow-all runs the same checks against a proxy that allows
# everything (no boundary, unmatched: insecure-allow, no blob gating): the
# denial checks must then fail.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
MODEL_MIB=${MODEL_MIB:-2048}
MODEL_LAYERS=${MODEL_LAYERS:-4}
KIT_MIB=${KIT_MIB:-512}
ROUNDS=${ROUNDS:-1}
MODELS_POLICY=${MODELS_POLICY:-enforce}
export PATH="$E2E_BIN:$PATH"

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-models.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export HOME="$work/home" TUF_ROOT="$work/tuf" COSIGN_PASSWORD=""
mkdir -p "$HOME"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
for tool in docker-registry containerd ctr oras cosign2 cosign3 curl python3; do
  command -v "$tool" >/dev/null || { echo "no $tool (test/e2e/install.sh)" >&2; rm -rf "$work"; exit 2; }
done
case "$MODELS_POLICY" in enforce | allow-all) ;; *) echo "MODELS_POLICY must be enforce or allow-all" >&2; rm -rf "$work"; exit 2 ;; esac
[ $((MODEL_MIB % MODEL_LAYERS)) -eq 0 ] || { echo "MODEL_MIB must be a multiple of MODEL_LAYERS" >&2; rm -rf "$work"; exit 2; }
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
phase() { printf '\n[models] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[models] ABORT: %s\n' "$*" >&2; exit 1; }
must() {
  local what=$1; shift
  "$@" >"$work/must.$BASHPID.out" 2>&1 || { show "$work/must.$BASHPID.out" 10 >&2; die "$what failed"; }
  rm -f "$work/must.$BASHPID.out"
}
bg_pids=()
spawn() { "$@" & bg_pids+=($!); }
join() {
  local p n=0
  for p in "${bg_pids[@]}"; do wait "$p" || n=$((n+1)); done
  bg_pids=()
  [ "$n" -eq 0 ] || die "$n background steps failed (output above)"
}

phase "registry and containerd (run $RUN)"
cat > "$work/dist.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $work/dist}
http:
  addr: 127.0.0.1:0
YML
docker-registry serve "$work/dist.yml" >"$work/dist.log" 2>&1 & dist_pid=$!; pids+=($dist_pid)
DIST=127.0.0.1:$(await_port "$dist_pid" docker-registry) || die "docker-registry did not start: $(tail -3 "$work/dist.log")"
owns_port "$dist_pid" "${DIST##*:}" || die "docker-registry: port ${DIST##*:} is not held by PID $dist_pid"
wait_http "http://$DIST/v2/" || die "docker-registry at $DIST does not answer /v2/"
# The registry must hand back a marker only this run pushed, from this
# run's storage directory.
echo "$RUN" > "$work/marker.txt"
marker=$(cd "$work" && oras push --plain-http --format go-template='{{.digest}}' "$DIST/models/marker-$RUN:v1" marker.txt 2>"$work/out") ||
  { show "$work/out" >&2; die "oras push of the marker failed"; }
[ "$(oras resolve --plain-http "$DIST/models/marker-$RUN:v1" 2>/dev/null)" = "$marker" ] || die "the registry at $DIST does not answer this run's marker"
[ -e "$work/dist/docker/registry/v2/repositories/models/marker-$RUN/_manifests/tags/v1" ] || die "the marker is not in $work/dist"

start_containerd "$work/ctrd" || die "containerd did not start: $(tail -3 "$work/ctrd.log")"
echo "  dist $DIST (pid $dist_pid), containerd $work/ctrd/containerd.sock"

phase "building models ($MODEL_MIB MiB ModelPack in $MODEL_LAYERS layers, $KIT_MIB MiB KitOps ModelKit)"
cd "$work" || die "cd $work"
spawn must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix v3
spawn must "cosign2 generate-key-pair" cosign2 generate-key-pair --output-key-prefix v2
mkdir -p llm kit/model kit/data kit/src small
layer_mib=$((MODEL_MIB / MODEL_LAYERS))
weights=()
for i in $(seq "$MODEL_LAYERS"); do
  f=$(printf 'model-%05d-of-%05d.safetensors' "$i" "$MODEL_LAYERS")
  weights+=("$f")
  # Hashed as written, so the model config costs no second read.
  spawn must "weights $f" sh -c "head -c $((layer_mib << 20)) /dev/urandom | tee llm/$f | sha256sum | cut -d' ' -f1 > llm/.$f.sha256"
done
spawn must "ModelKit weights" sh -c "head -c $((KIT_MIB << 20)) /dev/urandom > kit/model/model.safetensors"
# The replacement for one weight layer, swapped in after signing.
spawn must "swapped weights" sh -c "head -c $((layer_mib << 20)) /dev/urandom > swapped.safetensors"
join
echo "{\"architectures\":[\"LlamaForCausalLM\"],\"run\":\"$RUN\"}" > llm/config.json
echo "# e2e model $RUN" > llm/README.md

# push_modelpack KEY DIR REPO FILE...: pushes DIR's files as a ModelPack
# model (weights, weight config, docs by name), annotated with their
# paths, and records the digest and the manifest.
declare -A D
mkdir -p "$work/manifests"
push_modelpack() {
  local k=$1 dir=$2 repo=$3 f mt files=(); shift 3
  for f in "$@"; do
    case $f in
      *.safetensors) mt=application/vnd.cncf.model.weight.v1.raw ;;
      README.md) mt=application/vnd.cncf.model.doc.v1.raw ;;
      *) mt=application/vnd.cncf.model.weight.config.v1.raw ;;
    esac
    files+=("$f:$mt")
  done
  # The model config's diffIds are the raw layers' digests (model-spec).
  python3 - "$dir" "$RUN" "$(date -u +%FT%TZ)" "$@" > "$dir/.model-config.json" <<'PY' || die "model config for $repo"
import hashlib, json, sys
d, run, created, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def digest(f):
    try:
        return "sha256:" + open(f"{d}/.{f}.sha256").read().strip()
    except FileNotFoundError:
        pass
    h = hashlib.sha256()
    with open(f"{d}/{f}", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
json.dump({"descriptor": {"name": "e2e-llm", "version": run, "createdAt": created},
           "config": {"architecture": "transformer", "format": "safetensors", "paramSize": "1B", "precision": "bf16"},
           "modelfs": {"type": "layers", "diffIds": [digest(f) for f in files]}}, sys.stdout)
json.dump({f: {"org.cncf.model.filepath": f} for f in files}, open(f"{d}/.annotations.json", "w"))
PY
  D[$k]=$(cd "$dir" && oras push --plain-http --format go-template='{{.digest}}' "$DIST/$repo:v1" \
    --artifact-type application/vnd.cncf.model.manifest.v1+json \
    --config .model-config.json:application/vnd.cncf.model.config.v1+json \
    --annotation-file .annotations.json "${files[@]}" 2>"$work/out") || { show "$work/out" >&2; die "oras push $repo failed"; }
  [[ ${D[$k]} == sha256:* ]] || die "oras push $repo printed no digest: ${D[$k]}"
  oras manifest fetch --plain-http "$DIST/$repo@${D[$k]}" > "$work/manifests/$k.json" || die "manifest of $repo"
}
provenance() { # FILE: an SLSA v1 predicate from the trainer the policy trusts
  cat > "$work/$1" <<JSON
{"buildDefinition":{"buildType":"https://e2e.local/train/v1","externalParameters":{"epochs":3},
 "resolvedDependencies":[{"name":"trainer-src","uri":"git+https://git.e2e.local/trainer@refs/heads/main","digest":{"gitCommit":"0123456789abcdef0123456789abcdef01234567"}}]},
 "runDetails":{"builder":{"id":"https://ci.e2e.local/trainer"},"metadata":{"startedOn":"$(date -u -d '-2 hour' +%FT%TZ)","finishedOn":"$(date -u -d '-1 hour' +%FT%TZ)"}}}
JSON
}
provenance prov.json
sign3() { must "cosign3 sign $1" cosign3 sign --key v3.key --use-signing-config=false --tlog-upload=false -y "$1"; }
attest3() { must "cosign3 attest $1" cosign3 attest --key v3.key --use-signing-config=false --tlog-upload=false --type slsaprovenance1 --predicate prov.json -y "$1"; }
sign2() { must "cosign2 sign $1" cosign2 sign --key v2.key --tlog-upload=false -y "$1"; }
attest2() { must "cosign2 attest $1" cosign2 attest --key v2.key --tlog-upload=false --type slsaprovenance1 --predicate prov.json -y "$1"; }

LLM=models/modelpack/llm KIT=models/kitops/sentiment UNSIGNED=models/modelpack/unsigned NOPROV=models/modelpack/no-provenance
t0=$(date +%s)
push_modelpack llm llm "$LLM" "${weights[@]}" config.json README.md
echo "  pushed $LLM ($MODEL_MIB MiB) in $(( $(date +%s) - t0 ))s"
head -c 1048576 /dev/urandom > small/model.safetensors
push_modelpack unsigned small "$UNSIGNED" model.safetensors
head -c 1048576 /dev/urandom > small/model.safetensors
push_modelpack noprov small "$NOPROV" model.safetensors

# A KitOps ModelKit as kit pack lays it out: the Kitfile as the config,
# one tar layer per Kitfile section, the artifactType kit 1.x writes.
echo "{\"text\": \"eval $RUN\"}" > kit/data/eval.jsonl
echo "print('serve $RUN')" > kit/src/serve.py
echo "# ModelKit $RUN" > kit/README.md
cat > kit/Kitfile.json <<JSON
{"manifestVersion":"1.0.0","package":{"name":"sentiment","version":"1.0.0","authors":["e2e"]},
 "model":{"name":"sentiment","path":"model","framework":"safetensors"},
 "datasets":[{"name":"eval","path":"data"}],"code":[{"path":"src"}],"docs":[{"path":"README.md"}]}
JSON
(cd kit && tar -cf model.tar model && tar -cf dataset.tar data && tar -cf code.tar src && tar -cf docs.tar README.md) || die "ModelKit tars"
cat > kit/annotations.json <<'JSON'
{"model.tar": {"org.cncf.model.filepath": "model"}, "dataset.tar": {"org.cncf.model.filepath": "data"},
 "code.tar": {"org.cncf.model.filepath": "src"}, "docs.tar": {"org.cncf.model.filepath": "README.md"}}
JSON
D[kit]=$(cd kit && oras push --plain-http --format go-template='{{.digest}}' "$DIST/$KIT:v1" \
  --artifact-type application/vnd.kitops.modelkit.manifest.v1+json \
  --config Kitfile.json:application/vnd.kitops.modelkit.config.v1+json --annotation-file annotations.json \
  model.tar:application/vnd.kitops.modelkit.model.v1.tar dataset.tar:application/vnd.kitops.modelkit.dataset.v1.tar \
  code.tar:application/vnd.kitops.modelkit.code.v1.tar docs.tar:application/vnd.kitops.modelkit.docs.v1.tar 2>"$work/out") ||
  { show "$work/out" >&2; die "oras push $KIT failed"; }
[[ ${D[kit]} == sha256:* ]] || die "oras push $KIT printed no digest: ${D[kit]}"
oras manifest fetch --plain-http "$DIST/$KIT@${D[kit]}" > "$work/manifests/kit.json" || die "manifest of $KIT"
rm -f kit/model.tar

# Without the referrers API, cosign v3 keeps a subject's signature and
# attestation bundles in one fallback index (tag sha256-<hex>) that each
# run reads, extends and writes back: the two for one subject must not
# run at once, or one is lost.
spawn eval 'sign3 "$DIST/$LLM@${D[llm]}"; attest3 "$DIST/$LLM@${D[llm]}"'
spawn sign3 "$DIST/$NOPROV@${D[noprov]}"
spawn eval 'sign2 "$DIST/$KIT@${D[kit]}"; attest2 "$DIST/$KIT@${D[kit]}"'
join
for k in llm kit unsigned noprov; do printf '  %-9s %s\n' "$k" "${D[$k]}"; done

phase "portcullis"
ALIAS=dist-$RUN.e2e.local
# policy: every model repository needs a signature by its release key and
# SLSA provenance from the trusted trainer; anything else is denied.
write_config() { # FILE [EXTRA-YAML]
  if [ "$MODELS_POLICY" = allow-all ]; then
    printf 'listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nupstreams:\n  - {name: dist, url: "http://%s", aliases: [%s, "%s"], insecure: true}\n' "$DIST" "$ALIAS" "$DIST" > "$1"
    printf 'boundaries: []\nunmatched: insecure-allow\ninsecure_disable_blob_gating: true\nlog: {level: info}\n%s\n' "${2:-}" >> "$1"
    return
  fi
  cat > "$1" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: dist, url: "http://$DIST", aliases: [$ALIAS, "$DIST"], insecure: true}
trust:
  - {name: modelpack-release, keys: [$work/v3.pub]}
  - {name: kitops-release, keys: [$work/v2.pub]}
boundaries:
  - name: modelpack
    match: {repositories: ["models/**"], artifact_types: ["application/vnd.cncf.model.manifest.v1+json"]}
    signatures:
      authorities: [{name: release, key: modelpack-release}]
    attestations:
      - {name: provenance, predicate_type: "https://slsa.dev/provenance/v1", authorities: [release], max_age: 24h,
         condition: 'predicate.runDetails.builder.id == "https://ci.e2e.local/trainer"'}
  - name: kitops
    match: {repositories: ["models/**"], artifact_types: ["application/vnd.kitops.modelkit.manifest.v1+json", "application/vnd.kitops.modelkit.config.v1+json"]}
    signatures:
      authorities: [{name: release, key: kitops-release}]
    attestations:
      - {name: provenance, predicate_type: "https://slsa.dev/provenance/v1", authorities: [release], max_age: 24h,
         condition: 'predicate.runDetails.builder.id == "https://ci.e2e.local/trainer"'}
unmatched: deny
log: {level: info}
${2:-}
YML
}
write_config "$work/portcullis.yaml"
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"

# start_portcullis NAME CONFIG: stops the running proxy and starts a fresh
# one (empty verdict cache), checks it holds the ports it logs, and points
# containerd's hosts.toml at it.
pc_pid="" PROXY="" ADMIN="" PC_LOG=""
# PC_WRAP is a command the proxy is started under (prlimit, below).
PC_WRAP=()
stop_portcullis() {
  [ -n "$pc_pid" ] || return 0
  kill -TERM "$pc_pid" 2>/dev/null
  wait "$pc_pid" 2>/dev/null
  pc_pid=""
}
start_portcullis() {
  stop_portcullis
  PC_LOG=$work/portcullis-$1.log PROXY="" ADMIN=""
  "${PC_WRAP[@]}" "$PORTCULLIS" serve --config "$2" >"$PC_LOG" 2>&1 & pc_pid=$!; pids+=($pc_pid)
  await_portcullis "$pc_pid" "$PC_LOG" || die "portcullis did not start"
  curl -fsS "http://$PROXY/v2/$ALIAS/models/marker-$RUN/tags/list" 2>/dev/null | has '"v1"' ||
    die "the proxy at $PROXY does not route $ALIAS to this run's registry"
  rm -rf "$work/certs.d"
  must "portcullis mirror-config containerd" "$PORTCULLIS" mirror-config containerd --proxy "http://$PROXY" --out "$work/certs.d" "$DIST"
  P=$PROXY/$ALIAS
}
start_portcullis first "$work/portcullis.yaml"
echo "  proxy $PROXY, admin $ADMIN (pid $pc_pid)"

# cpu PID: the user+system CPU seconds PID has used (0 without a PID).
TICK=$(getconf CLK_TCK)
cpu() { if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then awk -v t="$TICK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; else echo 0; fi; }
# timed NAME CMD...: runs CMD, keeps its output in $work/out, its wall time
# in seconds in T[NAME], and the CPU seconds the registry and the proxy
# spent meanwhile in CR[NAME] and CP[NAME]: CPU time is steadier than wall
# time on a busy machine.
declare -A T CR CP
timed() {
  local n=$1 s e rc r0 p0; shift
  r0=$(cpu "$dist_pid") p0=$(cpu "$pc_pid")
  s=$(date +%s%N)
  "$@" >"$work/out" 2>&1; rc=$?
  e=$(date +%s%N)
  T[$n]=$(awk -v d=$((e - s)) 'BEGIN { printf "%.2f", d / 1e9 }')
  CR[$n]=$(awk -v a="$r0" -v b="$(cpu "$dist_pid")" 'BEGIN { printf "%.2f", b - a }')
  CP[$n]=$(awk -v a="$p0" -v b="$(cpu "$pc_pid")" 'BEGIN { printf "%.2f", b - a }')
  return $rc
}
# layers KEY: "digest size title" for each layer of KEY's pushed manifest.
layers() { python3 -c 'import json,sys
for l in json.load(open(sys.argv[1]))["layers"]:
    print(l["digest"], l["size"], (l.get("annotations") or {}).get("org.opencontainers.image.title", "-"))' "$work/manifests/$1.json"; }
# files_ok DIR KEY: DIR holds exactly the layers of KEY under their titles,
# each hashing to its pushed digest.
files_ok() {
  python3 - "$1" "$work/manifests/$2.json" <<'PY'
import hashlib, json, os, sys
d, m = sys.argv[1], json.load(open(sys.argv[2]))
want = {l["annotations"]["org.opencontainers.image.title"]: l["digest"] for l in m["layers"]}
got = sorted(os.listdir(d))
if got != sorted(want):
    sys.exit(f"files {got}, pushed {sorted(want)}")
for name, dig in want.items():
    h = hashlib.sha256()
    with open(os.path.join(d, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != dig:
        sys.exit(f"{name} hashes to sha256:{h.hexdigest()}, pushed {dig}")
PY
}
# oras_pull NAME DIR REF: oras pull into a fresh DIR, timed.
oras_pull() { rm -rf "$2" && mkdir -p "$2" && timed "$1" oras pull --plain-http -o "$2" "$3"; }
# ctr_fetch NAME REF [ARGS...]: ctr content fetch, timed. The image name is
# the real registry's, so a fallback past the proxy would succeed.
ctr_fetch() { local n=$1 ref=$2; shift 2; timed "$n" "${CTR[@]}" content fetch "$@" "$ref"; }
# ctr_has KEY: containerd holds the image at KEY's digest and every layer.
ctr_has() {
  local dig held
  "${CTR[@]}" images ls | has -F "${D[$1]}" || return 1
  held=$("${CTR[@]}" content ls -q) || return 1
  for dig in $(layers "$1" | cut -d' ' -f1); do has -Fx "$dig" <<< "$held" || return 1; done
}
# ctr_holds_none KEY: no layer of KEY's manifest is in containerd's store.
ctr_holds_none() {
  local dig held
  held=$("${CTR[@]}" content ls -q) || return 1
  for dig in $(layers "$1" | cut -d' ' -f1); do has -Fx "$dig" <<< "$held" && return 1; done
  return 0
}
# ctr_forget REF KEY: removes the image and collects its content, so the
# next fetch transfers every byte again.
ctr_forget() {
  "${CTR[@]}" images rm --sync "$1" >/dev/null 2>&1
  ctr_holds_none "$2" || die "containerd still holds layers of $1 after images rm --sync: warm numbers would be wrong"
}
audit_denied() { # DIGEST WANT (as the JSON log escapes it)
  grep '"decision":"deny"' "$PC_LOG" | grep -F "\"digest\":\"$1\"" | has -F -- "${2//\"/\\\"}"
}

# bench_oras LABEL KEY REPO CHECK: direct 1st, through cold (a fresh
# proxy), direct 2nd, through warm, interleaved; CHECK DIR KEY checks what
# oras wrote through the proxy.
# CONFIG (default portcullis.yaml) configures the proxy; every round starts
# it afresh, with an empty blob cache when it has one.
bench_oras() {
  local l=$1 k=$2 repo=$3 check=$4 config=${5:-$work/portcullis.yaml} r w n
  for r in $(seq "$ROUNDS"); do
    rm -rf "$work/blob-cache"
    start_portcullis "$l-$r" "$config"
    for w in cold warm; do
      [ "$w" = cold ] && n=direct1 || n=direct2
      oras_pull "$l/$n/$r" "$work/pull" "$DIST/$repo:v1" || { bad "oras pull $repo directly"; show "$work/out" 3; }
      if oras_pull "$l/$w/$r" "$work/pull" "$P/$repo:v1"; then
        if out=$($check "$work/pull" "$k" 2>&1); then ok "oras pull $repo through portcullis ($l), $w (${T[$l/$w/$r]}s): the pushed files"
        else bad "oras pull $repo through portcullis ($l), $w: $out"; fi
      else bad "oras pull $repo through portcullis ($l), $w"; show "$work/out" 3; fi
    done
  done
  rm -rf "$work/pull"
}
# kit_ok DIR KEY: the files check, and the tars unpack to what was packed.
kit_ok() {
  files_ok "$1" "$2" || return 1
  tar -xOf "$1/model.tar" model/model.safetensors | cmp -s - "$work/kit/model/model.safetensors" || { echo "model.tar does not unpack to the packed weights"; return 1; }
  tar -xOf "$1/dataset.tar" data/eval.jsonl | cmp -s - "$work/kit/data/eval.jsonl" || { echo "dataset.tar does not unpack to the packed data"; return 1; }
}

phase "ModelPack $MODEL_MIB MiB: oras pull, direct and through portcullis"
bench_oras mp-oras llm "$LLM" files_ok

phase "ModelPack $MODEL_MIB MiB: containerd (ctr content fetch), direct and through portcullis"
ctr_run() { # LABEL WHAT ARGS...
  local l=$1 what=$2; shift 2
  if ctr_fetch "$l" "$DIST/$LLM:v1" "$@"; then
    if ctr_has llm; then [ "$what" = direct ] || ok "ctr content fetch $LLM through portcullis, $what (${T[$l]}s): the pushed digest and every layer"
    else bad "ctr content fetch $LLM $what: the image or a layer is missing"; fi
  else bad "ctr content fetch $LLM $what"; show "$work/out" 3; fi
  ctr_forget "$DIST/$LLM:v1" llm
}
for r in $(seq "$ROUNDS"); do
  start_portcullis "ctr-llm-$r" "$work/portcullis.yaml"
  ctr_run "mp-ctr/direct1/$r" direct --plain-http
  ctr_run "mp-ctr/cold/$r" cold --hosts-dir "$work/certs.d"
  ctr_run "mp-ctr/direct2/$r" direct --plain-http
  ctr_run "mp-ctr/warm/$r" warm --hosts-dir "$work/certs.d"
done
if grep '"decision":"allow"' "$PC_LOG" | has -F "\"digest\":\"${D[llm]}\""; then ok "the proxy's audit log records the allowed model digest for containerd"
else bad "no allow decision for ${D[llm]} in the audit log"; fi

phase "KitOps ModelKit ($KIT_MIB MiB model): oras pull, direct and through portcullis"
bench_oras kit-oras kit "$KIT" kit_ok
if ctr_fetch kit-ctr "$DIST/$KIT:v1" --hosts-dir "$work/certs.d" && ctr_has kit; then ok "ctr content fetch of the ModelKit through portcullis: the pushed digest and every layer"
else bad "ctr content fetch of the ModelKit through portcullis"; show "$work/out" 3; fi
ctr_forget "$DIST/$KIT:v1" kit

phase "blob cache"
write_config "$work/portcullis-cache.yaml" "blob_cache: {dir: $work/blob-cache, max_gib: $(( (MODEL_MIB >> 10) + 2 )), min_free_gib: 1}"
CACHE=no
if "$PORTCULLIS" config check "$work/portcullis-cache.yaml" >"$work/out" 2>&1; then
  CACHE=yes
  bench_oras mp-cache llm "$LLM" files_ok "$work/portcullis-cache.yaml"
  cached=$(du -sm "$work/blob-cache" 2>/dev/null | cut -f1)
  if [ "${cached:-0}" -ge "$MODEL_MIB" ]; then ok "the blob cache holds the model's layers (${cached} MiB)"
  else bad "the blob cache holds ${cached:-0} MiB after pulling the $MODEL_MIB MiB model"; fi
  rm -rf "$work/blob-cache"
  # A cache disk that cannot take the model: every file the proxy writes
  # is capped (RLIMIT_FSIZE) at 64 MiB, below one weight layer, so each
  # cache file fails mid-write as on a full disk. The pull must still get
  # every byte, and nothing may be cached.
  if command -v prlimit >/dev/null; then
    PC_WRAP=(prlimit --fsize=$((64 << 20)))
    start_portcullis cache-broken "$work/portcullis-cache.yaml"
    PC_WRAP=()
    if oras_pull mp-cache-broken "$work/pull" "$P/$LLM:v1"; then
      if out=$(files_ok "$work/pull" llm 2>&1); then ok "a blob cache that cannot be written still serves the model (oras pull, ${T[mp-cache-broken]}s): the pushed files"
      else bad "oras pull with a blob cache that cannot be written: $out"; fi
    else bad "oras pull with a blob cache that cannot be written"; show "$work/out" 3; fi
    werr=$(curl -fsS "http://$ADMIN/metrics" | awk '$1 == "portcullis_blob_cache_errors_total{op=\"write\"}" { print $2 }')
    if [ "${werr:-0}" -ge 1 ] 2>/dev/null; then ok "the failed cache writes are counted (portcullis_blob_cache_errors_total{op=\"write\"} $werr)"
    else bad "no failed cache write counted (portcullis_blob_cache_errors_total{op=\"write\"} ${werr:-absent})"; fi
    # The small layers fit and are cached; no weight layer may be, and no
    # partial file may be left.
    cached_big=0
    while read -r dg size _; do
      [ "$size" -gt $((64 << 20)) ] || continue
      [ -z "$(find "$work/blob-cache" -type f -name "${dg#sha256:}" 2>/dev/null)" ] || cached_big=$((cached_big + 1))
    done < <(layers llm)
    partial=$(find "$work/blob-cache/tmp" -type f 2>/dev/null | wc -l)
    if [ "$cached_big" -eq 0 ] && [ "$partial" -eq 0 ]; then ok "no weight layer was cached from a failed file, and no partial file is left"
    else bad "$cached_big weight layers cached from failed files, $partial partial files left"; fi
    stop_portcullis
    rm -rf "$work/blob-cache" "$work/pull"
  else
    echo "  no prlimit: the blob cache that cannot be written is not checked"
  fi
else
  echo "  this build does not accept blob_cache (config check: $(grep -m1 blob_cache "$work/out" || tail -1 "$work/out")): not measured"
fi

phase "denials (oras and containerd)"
start_portcullis denials "$work/portcullis.yaml"
R_UNSIGNED="no signatures found"
R_NOPROV='attestation rule "provenance": missing attestation https://slsa.dev/provenance/v1'
R_BLIND="is not referenced by any verified manifest"
# A signed model's tag moved to a manifest with one weight layer swapped:
# the other layers and the annotations are the signed model's.
mkdir -p tampered
for f in "${weights[@]}" config.json README.md .model-config.json .annotations.json; do ln -f "llm/$f" "tampered/$f"; done
swapped=${weights[1]:-${weights[0]}}
ln -f swapped.safetensors "tampered/$swapped"
files=()
for f in "${weights[@]}"; do files+=("$f:application/vnd.cncf.model.weight.v1.raw"); done
D[tampered]=$(cd tampered && oras push --plain-http --format go-template='{{.digest}}' "$DIST/$LLM:v1" \
  --artifact-type application/vnd.cncf.model.manifest.v1+json \
  --config .model-config.json:application/vnd.cncf.model.config.v1+json --annotation-file .annotations.json \
  "${files[@]}" config.json:application/vnd.cncf.model.weight.config.v1.raw README.md:application/vnd.cncf.model.doc.v1.raw 2>"$work/out") ||
  { show "$work/out" >&2; die "oras push of the tampered model failed"; }
oras manifest fetch --plain-http "$DIST/$LLM@${D[tampered]}" > "$work/manifests/tampered.json" || die "manifest of the tampered model"
[ "$(oras resolve --plain-http "$DIST/$LLM:v1")" = "${D[tampered]}" ] && [ "${D[tampered]}" != "${D[llm]}" ] ||
  die "the tag $LLM:v1 did not move to the tampered manifest"
swapped_digest=$(layers tampered | awk -v t="$swapped" '$3 == t { print $1 }')
echo "  $LLM:v1 now ${D[tampered]} ($swapped swapped to $swapped_digest)"

# expect_denied NAME WANT CMD...: CMD fails with the proxy's denial and
# its specific reason in its output.
expect_denied() {
  local n=$1 want=$2; shift 2
  if "$@" >"$work/out" 2>&1; then bad "$n (succeeded, expected a denial)"; return; fi
  if ! grep -qi 'denied' "$work/out"; then bad "$n (failed without a denial)"; show "$work/out"; return; fi
  if ! grep -qF -- "$want" "$work/out"; then bad "$n (denied without the reason \"$want\")"; show "$work/out"; return; fi
  ok "$n"
}
for row in "tampered|$LLM|$R_UNSIGNED|signed model's tag moved to a swapped weight layer" \
           "unsigned|$UNSIGNED|$R_UNSIGNED|unsigned model" "noprov|$NOPROV|$R_NOPROV|signed model without provenance"; do
  IFS='|' read -r k repo want what <<< "$row"
  rm -rf "$work/denied" && mkdir -p "$work/denied"
  expect_denied "oras pull: $what denied ($want)" "$want" oras pull --plain-http -o "$work/denied" "$P/$repo:v1"
  if [ -z "$(ls -A "$work/denied")" ]; then ok "oras: no file of the $what written"
  else bad "oras wrote files of the $what: $(ls -A "$work/denied" | tr '\n' ' ')"; fi
  if "${CTR[@]}" content fetch --hosts-dir "$work/certs.d" "$DIST/$repo:v1" >"$work/out" 2>&1; then bad "ctr content fetch: $what (succeeded, expected a denial)"
  elif ! grep -q 403 "$work/out"; then bad "ctr content fetch: $what failed without a 403"; show "$work/out" 3
  elif ! audit_denied "${D[$k]}" "$want"; then bad "ctr content fetch: $what: no audit event with \"$want\" for ${D[$k]}"
  else ok "ctr content fetch: $what denied with 403, audited: $want"; fi
  if "${CTR[@]}" images ls -q | has -F "$DIST/$repo:v1"; then bad "containerd recorded the denied $what"
  elif ! ctr_holds_none "$k"; then bad "containerd holds layers of the denied $what"
  else ok "containerd holds no image and no layer of the $what (no fallback to the registry)"; fi
done
expect_denied "oras blob fetch of the swapped layer by digest denied ($R_BLIND)" "$R_BLIND" \
  oras blob fetch --plain-http --output "$work/denied/blob" "$P/$LLM@$swapped_digest"
if [ -s "$work/denied/blob" ]; then bad "oras wrote bytes of the denied blob"; else ok "oras wrote no byte of the denied blob"; fi
if oras manifest fetch --plain-http "$P/$LLM@${D[llm]}" > "$work/m.proxy" 2>"$work/out" &&
   [ "sha256:$(sha256sum "$work/m.proxy" | cut -d' ' -f1)" = "${D[llm]}" ]; then
  ok "the signed model stays allowed by digest after its tag moved"
else bad "oras manifest fetch of the signed model by digest"; show "$work/out" 3; fi
stop_portcullis

phase "timings (median of $ROUNDS round(s); the machine may be running other work)"
# med LABEL ARRAY: the median over the rounds of ARRAY[LABEL/round].
med() {
  local -n a=$2
  local r
  for r in $(seq "$ROUNDS"); do [ -n "${a[$1/$r]:-}" ] && echo "${a[$1/$r]}"; done | sort -n |
    awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}
mib() { case $1 in mp-*) echo "$MODEL_MIB" ;; kit-*) echo "$KIT_MIB" ;; esac; }
row() { # WHAT DIRECT-LABEL THROUGH-LABEL
  local d t m rc tr tp
  d=$(med "$2" T) t=$(med "$3" T) m=$(mib "$2")
  rc=$(med "$2" CR) tr=$(med "$3" CR) tp=$(med "$3" CP)
  if [ -z "$d" ] || [ -z "$t" ]; then printf '  %-42s %8s %10s\n' "$1" "${d:--}" "${t:--}"; return; fi
  awk -v w="$1" -v d="$d" -v t="$t" -v m="$m" -v rc="$rc" -v tr="$tr" -v tp="$tp" 'BEGIN {
    printf "  %-42s %6.2f s %8.2f s %6.2fx %5.0f / %-5.0f %7.2f s %7.2f s %7.2f s\n", w, d, t, t / d, m / d, m / t, rc, tr, tp }'
}
# Columns: wall time direct and through the proxy, their ratio, MiB/s
# direct / through, the registry's CPU for the direct pull, the
# registry's and the proxy's CPU for the pull through the proxy.
printf '  %-42s %8s %10s %7s %13s %9s %9s %9s\n' "pull" "direct" "portcullis" "ratio" "MiB/s d / p" "reg CPU" "reg CPU" "pc CPU"
row "ModelPack $MODEL_MIB MiB, oras pull, cold" mp-oras/direct1 mp-oras/cold
row "ModelPack $MODEL_MIB MiB, oras pull, warm" mp-oras/direct2 mp-oras/warm
row "ModelPack $MODEL_MIB MiB, ctr content fetch, cold" mp-ctr/direct1 mp-ctr/cold
row "ModelPack $MODEL_MIB MiB, ctr content fetch, warm" mp-ctr/direct2 mp-ctr/warm
row "KitOps $KIT_MIB MiB, oras pull, cold" kit-oras/direct1 kit-oras/cold
row "KitOps $KIT_MIB MiB, oras pull, warm" kit-oras/direct2 kit-oras/warm
if [ "$CACHE" = yes ]; then
  row "ModelPack $MODEL_MIB MiB, oras, blob_cache, cold" mp-cache/direct1 mp-cache/cold
  row "ModelPack $MODEL_MIB MiB, oras, blob_cache, warm" mp-cache/direct2 mp-cache/warm
else echo "  (blob_cache: not accepted by this build, not measured)"; fi
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n[models] %s passed, %s failed in %ss\n' "$passed" "$failed" "$(( $(date +%s) - started ))"
echo "models: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
