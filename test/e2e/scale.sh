#!/usr/bin/env bash
# Scale-out end to end: a real registry, a real redis-server and three
# portcullis replicas sharing it (shared.redis), behind a round-robin
# front (test/e2e/rr) that sends each request to the next replica, as a
# Kubernetes Service spreads a pull over several pods, and a second front
# that keeps each client address on one replica (sessionAffinity:
# ClientIP). The replicas reach the registry through another rr that
# counts every upstream request and can hold one back. Checks that pulls
# spread over the replicas succeed with the pushed bytes, that a layer is
# served by one replica right after another served its manifest, that
# unsigned content is denied by every replica, that a herd of 900 clients
# on one new digest costs one verification and one fetch of each piece of
# evidence, that killing the replica verifying a digest holds the others
# back only until its lease expires, and that stopping Redis while nodes
# pull (test/e2e/load) neither opens nor breaks the proxies, with and
# without affinity, and restarting it resumes sharing.
# Prints "scale: N passed, M failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-scale.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
# HOME moves into the work directory below: the suite's Go tools still
# build with the caller's caches and settings.
if command -v go >/dev/null; then
  export GOCACHE=${GOCACHE:-$(go env GOCACHE)} GOMODCACHE=${GOMODCACHE:-$(go env GOMODCACHE)} GOENV=${GOENV:-$(go env GOENV)}
fi
export HOME="$work/home" DOCKER_CONFIG="$work/home/.docker" COSIGN_PASSWORD="" TUF_ROOT="$work/tuf"
mkdir -p "$HOME"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
for tool in docker-registry redis-server redis-cli crane oras cosign2 cosign3 curl python3 go; do
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
phase() { printf '\n[scale] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[scale] ABORT: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
must() {
  local what=$1; shift
  "$@" >"$work/must.$BASHPID.out" 2>&1 || { show "$work/must.$BASHPID.out" 10 >&2; die "$what failed"; }
}

phase "registry (run $RUN)"
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
owns_port "$dist_pid" "${DIST##*:}" || die "port ${DIST##*:} is not held by PID $dist_pid"
wait_http "http://$DIST/v2/" || die "docker-registry at $DIST does not answer"
echo "  registry $DIST (pid $dist_pid)"

phase "redis-server"
# redis-server has no "port 0": a free port is picked, then the process
# must be seen holding it (another process taking it in between fails the
# check instead of silently sharing someone else's Redis).
REDIS_PASSWORD=redis-$RUN-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export E2E_REDIS_PASSWORD=$REDIS_PASSWORD
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/redis.conf" <<CONF
bind 127.0.0.1
port $redis_port
requirepass $REDIS_PASSWORD
save ""
appendonly no
dir $work
CONF
redis_start() {
  redis-server "$work/redis.conf" >>"$work/redis.log" 2>&1 & redis_pid=$!; pids+=($redis_pid)
  for _ in $(seq 100); do owns_port "$redis_pid" "$redis_port" && return 0; kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.05; done
  show "$work/redis.log" 5 >&2; die "redis-server does not hold port $redis_port"
}
redis_start
echo "  redis 127.0.0.1:$redis_port (pid $redis_pid)"

phase "content"
cd "$work"
bg_pids=()
spawn() { "$@" & bg_pids+=($!); }
join() {
  local p n=0
  for p in "${bg_pids[@]}"; do wait "$p" || n=$((n+1)); done
  bg_pids=()
  [ "$n" -eq 0 ] || die "$n signing steps failed (output above)"
}
declare -A D
# image KEY REPO: a one-layer image of random bytes pushed to REPO:v1.
image() {
  local k=$1 repo=$2
  mkdir -p "$work/payload/$k"
  head -c 4096 /dev/urandom > "$work/payload/$k/blob.bin"
  tar -C "$work/payload/$k" -cf "$work/payload/$k.tar" blob.bin
  must "crane append $repo" crane append --oci-empty-base -f "$work/payload/$k.tar" -t "$DIST/$repo:v1"
  D[$k]=$(crane digest "$DIST/$repo:v1") || die "crane digest $repo"
}
spawn must "cosign2 generate-key-pair" cosign2 generate-key-pair --output-key-prefix v2
spawn must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix v3
join
# Every check gets digests no replica has seen, so verifications and
# cache hits are attributable to it.
signed=(pull pull3 ctrd hop1 hop2 hop3 rvk rvo herd kill outage outsrc restart1 restart2 restart3 restart4 restart5 restart6)
for k in "${signed[@]}" unsigned; do image "$k" "e2e/scale/$k"; done
for k in "${signed[@]}"; do
  if [ "$k" = pull3 ]; then
    spawn must "cosign3 sign $k" cosign3 sign --key v3.key --use-signing-config=false --tlog-upload=false -y "$DIST/e2e/scale/$k@${D[$k]}"
  else
    spawn must "cosign2 sign $k" cosign2 sign --key v2.key --tlog-upload=false -y "$DIST/e2e/scale/$k@${D[$k]}"
  fi
done
# model KEY REPO: a ModelPack-shaped model (two weight files) pushed with
# oras to REPO:v1.
model() {
  local k=$1 repo=$2 dir=$work/payload/$1
  mkdir -p "$dir"
  head -c 1048576 /dev/urandom > "$dir/weights-1.safetensors"
  head -c 1048576 /dev/urandom > "$dir/weights-2.safetensors"
  printf '{"descriptor":{"name":"%s"},"config":{"format":"safetensors"},"modelfs":{"type":"layers","diffIds":[]}}' "$k-$RUN" > "$dir/.config.json"
  D[$k]=$(cd "$dir" && oras push --plain-http --format go-template='{{.digest}}' "$DIST/$repo:v1" \
    --artifact-type application/vnd.cncf.model.manifest.v1+json \
    --config .config.json:application/vnd.cncf.model.config.v1+json \
    weights-1.safetensors:application/vnd.cncf.model.weight.v1.raw \
    weights-2.safetensors:application/vnd.cncf.model.weight.v1.raw 2>"$work/out") || { show "$work/out" >&2; die "oras push $repo failed"; }
  [[ ${D[$k]} == sha256:* ]] || die "oras push $repo printed no digest: ${D[$k]}"
}
model model e2e/scale/model
model umodel e2e/scale/umodel
spawn must "cosign2 sign model" cosign2 sign --key v2.key --tlog-upload=false -y "$DIST/e2e/scale/model@${D[model]}"
spawn must "go build test/e2e/rr" bash -c "cd '$root' && go build -o '$work/rr' ./test/e2e/rr"
spawn must "go build test/e2e/load" bash -c "cd '$root' && go build -o '$work/load' ./test/e2e/load"
join
# The outage phases need images no replica has seen, many of them: copies
# of one signed image with its signature, in repositories of their own
# (verdicts and blob gating are per repository).
copies=(aff-w1 aff-w2 aff-f1 aff-f2 aff-f3 aff-f4 rr-w1 rr-w2 rr-f1 rr-f2 rr-f3 rr-f4 restart7)
sigtag=$(echo "${D[outsrc]}" | tr : -).sig
for k in "${copies[@]}"; do
  spawn must "crane cp $k" bash -c "crane cp '$DIST/e2e/scale/outsrc:v1' '$DIST/e2e/scale/$k:v1' && crane cp '$DIST/e2e/scale/outsrc:$sigtag' '$DIST/e2e/scale/$k:$sigtag'"
  D[$k]=${D[outsrc]}
done
join
echo "  ${#signed[@]} signed images, ${#copies[@]} signed copies and one unsigned in e2e/scale/"

phase "upstream spy"
# start_rr VAR LOG ARGS...: runs test/e2e/rr with ARGS; VAR is its address
# and VAR_PID its PID.
start_rr() {
  local var=$1 log=$2 a= p; shift 2
  # Emptied here, not by the child's redirection: the loop below must not
  # read the address a previous run logged.
  : >"$log"
  "$work/rr" -listen 127.0.0.1:0 "$@" >>"$log" 2>&1 & p=$!; pids+=($p)
  for _ in $(seq 100); do a=$(sed -n 's/^listening //p' "$log"); [ -n "$a" ] && break; sleep 0.05; done
  [ -n "$a" ] && owns_port "$p" "${a##*:}" || die "rr $* did not start: $(tail -3 "$log")"
  printf -v "$var" %s "$a"; printf -v "${var}_PID" %s "$p"
}
# Every upstream request of the replicas is counted; the first evidence
# request for the kill image is held 4 s, so that its verification is
# still running when the replica verifying it is killed (see below).
killhex=${D[kill]#sha256:}
start_rr SPY "$work/spy.log" -count -delay "sha256-$killhex|referrers/sha256:$killhex=4s" "http://$DIST"
echo "  counting relay $SPY in front of the registry (pid $SPY_PID)"

phase "three replicas sharing redis"
cat > "$work/portcullis.yaml" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: dist, url: "http://$SPY", insecure: true}
default_upstream: dist
trust:
  - {name: cosign-v2, keys: [v2.pub]}
  - {name: cosign-v3, keys: [v3.pub]}
boundaries:
  - name: e2e
    match: {repositories: ["e2e/**"]}
    signatures:
      authorities: [{name: release-v2, key: cosign-v2}, {name: release-v3, key: cosign-v3}]
unmatched: deny
# Short enough that a replica waiting for a dead one's verdict is seen to
# take over (lease expiry, at most 5 s) well before it would give up.
verify_timeout: 8s
shared:
  # timeout: 1s rather than 200ms: the suite may run on a machine starved
  # of CPU, where a Redis call timing out makes a replica verify alone and
  # the herd's count of verifications would measure the machine. A stopped
  # Redis refuses connections at once, whatever the timeout.
  redis: {addr: "127.0.0.1:$redis_port", password_env: E2E_REDIS_PASSWORD, key_prefix: "e2e-$RUN:", timeout: 1s}
log: {level: info}
YML
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
declare -a PROXY ADMIN PCPID PLOG
# start_replica I: starts replica I (again: new ports, a new log).
start_replica() {
  local i=$1
  PLOG[$i]=$work/portcullis.$i.$(date +%s%N).log PROXY[$i]= ADMIN[$i]=
  "$PORTCULLIS" serve --config "$work/portcullis.yaml" >"${PLOG[$i]}" 2>&1 & PCPID[$i]=$!; pids+=(${PCPID[$i]})
}
# await_replica I: replica I listens, is ready and uses Redis.
await_replica() {
  local i=$1
  for _ in $(seq 200); do
    PROXY[$i]=$(logged_addr serving "${PLOG[$i]}") ADMIN[$i]=$(logged_addr admin "${PLOG[$i]}")
    [ -n "${PROXY[$i]}" ] && [ -n "${ADMIN[$i]}" ] && break
    kill -0 "${PCPID[$i]}" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "${PROXY[$i]}" ] && [ -n "${ADMIN[$i]}" ] || { show "${PLOG[$i]}" 20 >&2; die "replica $i did not log its addresses"; }
  owns_port "${PCPID[$i]}" "${PROXY[$i]##*:}" && owns_port "${PCPID[$i]}" "${ADMIN[$i]##*:}" || die "replica $i (PID ${PCPID[$i]}) does not hold ${PROXY[$i]} and ${ADMIN[$i]}"
  wait_http "http://${ADMIN[$i]}/readyz" || { show "${PLOG[$i]}" 20 >&2; die "replica $i not ready"; }
  has -F '"shared state: redis"' "${PLOG[$i]}" || die "replica $i did not turn shared state on"
  echo "  replica $i: proxy ${PROXY[$i]}, admin ${ADMIN[$i]} (pid ${PCPID[$i]})"
}
# start_fronts: the round-robin front RR and the client-address one RRA
# over the replicas as they are now.
start_fronts() {
  [ -n "${RR_PID:-}" ] && { kill "$RR_PID" "$RRA_PID" 2>/dev/null; wait "$RR_PID" "$RRA_PID" 2>/dev/null; }
  start_rr RR "$work/rr.log" "http://${PROXY[0]}" "http://${PROXY[1]}" "http://${PROXY[2]}"
  start_rr RRA "$work/rra.log" -affinity clientip "http://${PROXY[0]}" "http://${PROXY[1]}" "http://${PROXY[2]}"
  echo "  round-robin front $RR (pid $RR_PID), client-address front $RRA (pid $RRA_PID)"
}
for i in 0 1 2; do start_replica "$i"; done
for i in 0 1 2; do await_replica "$i"; done
start_fronts

accept='Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
# manifest ADDR KEY OUT: GET the manifest of KEY by digest; prints the status.
manifest() { curl -s -o "$3" -w '%{http_code}' -H "$accept" "http://$1/v2/e2e/scale/$2/manifests/${D[$2]}"; }
# blob ADDR KEY DIGEST OUT: prints the status.
blob() { curl -s -o "$4" -w '%{http_code}' "http://$1/v2/e2e/scale/$2/blobs/$3"; }
layer_of() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' "$1"; }
# verifications: portcullis_verifications_total summed over the replicas.
verifications() {
  local i n total=0
  for i in 0 1 2; do
    n=$(curl -fsS "http://${ADMIN[$i]}/metrics" | awk '$1 == "portcullis_verifications_total" { print int($2) }')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
# unpacks KEY FILE: FILE is the layer pushed for KEY.
unpacks() { tar -xOf "$2" blob.bin 2>/dev/null | cmp -s - "$work/payload/$1/blob.bin"; }

phase "crane pulls through the round-robin front"
for k in pull pull3; do
  rm -rf "$work/oci"
  if crane pull --format oci "$RR/e2e/scale/$k:v1" "$work/oci" >"$work/out" 2>&1; then
    idx=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$work/oci/index.json")
    m=$work/oci/blobs/sha256/${idx#sha256:}
    if [ "$idx" != "${D[$k]}" ] || [ "sha256:$(sha "$m")" != "${D[$k]}" ]; then bad "crane pull $k: manifest $idx, pushed ${D[$k]}"
    else
      l=$(layer_of "$m")
      if [ "sha256:$(sha "$work/oci/blobs/sha256/${l#sha256:}")" = "$l" ] && unpacks "$k" "$work/oci/blobs/sha256/${l#sha256:}"; then
        ok "crane pull $k over three replicas: the pushed digest and layer bytes"
      else bad "crane pull $k: layer bytes differ"; fi
    fi
  else bad "crane pull $k over three replicas"; show "$work/out" 5; fi
done
served=0
for i in 0 1 2; do
  c=$(curl -fsS "http://${ADMIN[$i]}/metrics" | awk '$1 ~ /^portcullis_requests_total/ { s += $2 } END { print int(s) }')
  [ "${c:-0}" -gt 0 ] && served=$((served+1))
done
[ "$served" = 3 ] && ok "every replica served part of the pulls" || bad "only $served replicas served requests: the front is not spreading them"

phase "containerd through the round-robin front"
# containerd fetches the manifest and the layers over several connections,
# as kubelet's pulls do behind a Service.
if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
  bad "containerd not installed"
else
  mkdir -p "$work/certs.d/$RR"
  cat > "$work/certs.d/$RR/hosts.toml" <<TOML
server = "http://$RR"
[host."http://$RR"]
  capabilities = ["pull", "resolve"]
TOML
  if start_containerd "$work/ctrd"; then
    if "${CTR[@]}" images pull --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/ctrd:v1" >"$work/out" 2>&1; then
      "${CTR[@]}" images ls | grep -F "$RR/e2e/scale/ctrd:v1" | has -F "${D[ctrd]}" &&
        ok "ctr pull over three replicas: containerd stored the pushed digest" || bad "ctr pull over three replicas: containerd's digest differs"
    else bad "ctr pull over three replicas"; show "$work/out" 5; fi
    if "${CTR[@]}" images pull --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/unsigned:v1" >"$work/out" 2>&1; then
      bad "ctr pull of the unsigned image succeeded"
    else
      grep -Eq '403|[Ff]orbidden|DENIED' "$work/out" && ok "ctr pull of the unsigned image: 403" || { bad "ctr pull of the unsigned image failed without 403"; show "$work/out" 3; }
    fi
    # A model is not an image: containerd fetches its content (as a
    # model volume or a loader on the node does) rather than unpacking it.
    if "${CTR[@]}" content fetch --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/model:v1" >"$work/out" 2>&1; then
      held=$("${CTR[@]}" content ls -q)
      missing=0
      for f in weights-1.safetensors weights-2.safetensors; do
        grep -Fxq "sha256:$(sha "$work/payload/model/$f")" <<< "$held" || missing=$((missing+1))
      done
      [ "$missing" = 0 ] && "${CTR[@]}" images ls | has -F "${D[model]}" &&
        ok "ctr content fetch of a signed model over three replicas: the pushed manifest and weights" ||
        bad "ctr content fetch of the model: $missing weight(s) missing or another digest"
    else bad "ctr content fetch of a signed model over three replicas"; show "$work/out" 5; fi
    if "${CTR[@]}" content fetch --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/umodel:v1" >"$work/out" 2>&1; then
      bad "ctr content fetch of the unsigned model succeeded"
    else
      grep -Eq '403|[Ff]orbidden|DENIED' "$work/out" && ok "ctr content fetch of the unsigned model: 403" || { bad "ctr fetch of the unsigned model failed without 403"; show "$work/out" 3; }
    fi
  else
    bad "containerd did not start: $(tail -3 "$work/ctrd.log")"
  fi
fi

phase "oras pulls models through the round-robin front"
rm -rf "$work/mpull" && mkdir -p "$work/mpull"
if oras pull --plain-http -o "$work/mpull" "$RR/e2e/scale/model:v1" >"$work/out" 2>&1; then
  same=0
  for f in weights-1.safetensors weights-2.safetensors; do
    cmp -s "$work/mpull/$f" "$work/payload/model/$f" && same=$((same+1))
  done
  [ "$same" = 2 ] && ok "oras pull of a signed model over three replicas: both weight files as pushed" || bad "oras pull of the model: $same of 2 weight files as pushed"
else bad "oras pull of a signed model over three replicas"; show "$work/out" 5; fi
rm -rf "$work/mpull" && mkdir -p "$work/mpull"
if oras pull --plain-http -o "$work/mpull" "$RR/e2e/scale/umodel:v1" >"$work/out" 2>&1; then
  bad "oras pull of the unsigned model succeeded"
else
  n=$(find "$work/mpull" -type f | wc -l)
  grep -Eiq '403|forbidden|denied' "$work/out" && has -F 'no signatures found' "$work/out" && [ "$n" = 0 ] && ok "oras pull of the unsigned model: denied (no signatures found), no file written" ||
    { bad "oras pull of the unsigned model: $n files, output:"; show "$work/out" 3; }
fi

phase "a layer from one replica right after another served its manifest"
for pair in "0 1 hop1" "1 2 hop2" "2 0 hop3"; do
  read -r a b k <<<"$pair"
  c=$(manifest "${PROXY[$a]}" "$k" "$work/m.json")
  if [ "$c" != 200 ]; then bad "$k: manifest on replica $a: $c"; show "$work/m.json" 2; continue; fi
  l=$(layer_of "$work/m.json")
  c=$(blob "${PROXY[$b]}" "$k" "$l" "$work/l.blob")
  if [ "$c" = 200 ] && [ "sha256:$(sha "$work/l.blob")" = "$l" ] && unpacks "$k" "$work/l.blob"; then
    ok "manifest on replica $a, its layer on replica $b: 200 with the pushed bytes"
  else bad "manifest on replica $a, its layer on replica $b: $c"; show "$work/l.blob" 2; fi
done

phase "a revocation on one replica: layers of manifests another replica served stay open unless revoked"
# Replica 0 serves both manifests before any revocation; the other replicas
# read their layers only after one, from the entries replica 0 recorded.
declare -A RL
for k in rvk rvo; do
  c=$(manifest "${PROXY[0]}" "$k" "$work/m.$k.json")
  [ "$c" = 200 ] || { show "$work/m.$k.json" 2 >&2; die "$k: manifest on replica 0: $c"; }
  RL[$k]=$(layer_of "$work/m.$k.json")
done
# revoke DIGEST: POSTs its revocation to replica 1 and waits until replica
# 2 has it from the broadcast; prints nothing, fails the check otherwise.
revoke() {
  local c
  c=$(curl -s -o "$work/out" -w '%{http_code}' -X POST "http://${ADMIN[1]}/v1/revocations" -d "{\"digest\":\"$1\",\"reason\":\"e2e\",\"by\":\"e2e\"}")
  [ "$c" = 201 ] || { bad "POST revocation of $1 on replica 1: $c"; show "$work/out" 2; return 1; }
  for _ in $(seq 100); do
    curl -fsS "http://${ADMIN[2]}/v1/revocations" | has -F "\"$1\"" && return 0
    sleep 0.1
  done
  bad "the revocation of $1 did not reach replica 2 within 10 s"; return 1
}
lift() { curl -s -o /dev/null -X DELETE "http://${ADMIN[1]}/v1/revocations?id=digest:$1"; }
# layer_is I KEY WANT: KEY's layer on replica I answers WANT (200: the pushed bytes).
layer_is() {
  local c
  c=$(blob "${PROXY[$1]}" "$2" "${RL[$2]}" "$work/l.blob")
  [ "$c" = "$3" ] && { [ "$3" != 200 ] || unpacks "$2" "$work/l.blob"; }
}
unrelated=sha256:$(printf 'unrelated-%s' "$RUN" | sha256sum | cut -d' ' -f1)
if revoke "$unrelated"; then
  for i in 1 2; do
    layer_is "$i" rvo 200 && ok "an unrelated revocation: replica $i opens the layer of a manifest replica 0 served before it (the pushed bytes)" ||
      bad "an unrelated revocation: replica $i refused the layer of a manifest replica 0 served before it"
  done
  if revoke "${D[rvk]}"; then
    for i in 1 2; do
      layer_is "$i" rvk 403 && ok "the manifest revoked: replica $i refuses its layer (403)" || bad "the manifest revoked: replica $i did not refuse its layer"
      layer_is "$i" rvo 200 && ok "the manifest revoked: replica $i still opens the other manifest's layer" || bad "the manifest revoked: replica $i refused the other manifest's layer"
    done
  fi
fi
lift "$unrelated"; lift "${D[rvk]}"

phase "unsigned content"
for i in 0 1 2; do
  c=$(manifest "${PROXY[$i]}" unsigned "$work/out")
  [ "$c" = 403 ] && has -F "no signatures found" "$work/out" && ok "unsigned denied by replica $i: 403" || { bad "unsigned on replica $i: $c"; show "$work/out" 2; }
done
ul=$(crane manifest "$DIST/e2e/scale/unsigned@${D[unsigned]}" > "$work/um.json" && layer_of "$work/um.json")
for i in 0 1 2; do
  c=$(blob "${PROXY[$i]}" unsigned "$ul" "$work/out")
  [ "$c" = 403 ] && ok "unsigned image's layer denied by replica $i: 403" || bad "unsigned layer on replica $i: $c"
done

# metric I SERIES: the value of SERIES (name and labels as exposed) on replica I, 0 if absent.
metric() { curl -fsS "http://${ADMIN[$1]}/metrics" | awk -v s="$2" '$1 == s { v = int($2) } END { print v + 0 }'; }
flight() { metric "$1" "portcullis_shared_flight_total{outcome=\"$2\"}"; }
redis_cli() { redis-cli -h 127.0.0.1 -p "$redis_port" -a "$REDIS_PASSWORD" --no-auth-warning "$@"; }
# field PHASE KEY FILE: a count from a "load nodes" report.
field() { awk -v p="phase=$1" -v k="$2" '$1 == p { for (i = 2; i <= NF; i++) { split($i, a, "="); if (a[1] == k) print a[2] } }' "$3"; }

phase "herd: 300 clients on each replica at once for one never-seen digest"
crane manifest "$DIST/e2e/scale/herd@${D[herd]}" >"$work/herd.want" || die "crane manifest herd"
outcomes=(led followed took_over timed_out alone)
declare -A fl0
for i in 0 1 2; do for o in "${outcomes[@]}"; do fl0[$i.$o]=$(flight "$i" "$o"); done; done
before=$(verifications)
"$work/load" herd -n 300 -repo e2e/scale/herd -digest "${D[herd]}" -want "$work/herd.want" "${PROXY[@]}" >"$work/herd.out" 2>"$work/herd.err"
herd_rc=$?
after=$(verifications)
herd=$((after - before))
sed 's/^/  /' "$work/herd.out"
# How each replica's share went (portcullis_shared_flight_total, this
# herd only), and its Redis errors so far: a Redis call that times out
# makes a replica verify alone.
for i in 0 1 2; do
  line="  replica $i: shared flight"
  for o in "${outcomes[@]}"; do line+=" $o=$(( $(flight "$i" "$o") - ${fl0[$i.$o]} ))"; done
  echo "$line; shared errors: $(curl -fsS "http://${ADMIN[$i]}/metrics" | awk '$1 ~ /^portcullis_shared_errors_total\{/ && $2 > 0 { printf "%s%s=%d", sep, substr($1, 31), $2; sep = " " }')"
done
herd_ms=$(sed -n 's/^total .* max_ms=\([0-9]*\) .*/\1/p' "$work/herd.out")
[ "$herd_rc" = 0 ] && has -E '^total ok=900 failed=0 ' "$work/herd.out" &&
  ok "all 900 herd requests: 200 with the pushed manifest bytes" || { bad "herd requests failed"; show "$work/herd.err" 5; }
[ "$herd" = 1 ] && ok "900 clients over 3 replicas: 1 verification in total" || bad "900 clients over 3 replicas: $herd verifications"
# What the replicas asked the registry for this digest: every piece of
# evidence once (the verifying replica), the subject manifest at most once
# per replica.
herdhex=${D[herd]#sha256:}
crane manifest "$DIST/e2e/scale/herd:sha256-$herdhex.sig" >"$work/herdsig.json" || die "crane manifest herd .sig"
herdsig=$(layer_of "$work/herdsig.json")
curl -fsS "http://$SPY/_rr/counts" >"$work/counts.json" || die "no counts from the upstream spy"
python3 - "$work/counts.json" "$herdhex" "$herdsig" >"$work/herd.upstream" <<'PY'
import json, sys
counts, hexd, sig = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
for k, n in sorted(counts.items()):
    path = k.split(" ", 1)[1]
    if "sha256-" + hexd in path or "referrers/sha256:" + hexd in path or path.endswith("/blobs/" + sig):
        print("evidence", n, k)
    elif "sha256:" + hexd in path:
        print("subject", n, k)
PY
sed 's/^/  upstream: /' "$work/herd.upstream"
herd_upstream=$(awk '{ printf "%s%s %s=%d", (NR > 1 ? ", " : ""), $3, $4, $2 }' "$work/herd.upstream" | sed "s/$herdhex/<hex>/g; s/${herdsig#sha256:}/<sig>/g")
has -E "^evidence 1 GET .*/manifests/sha256-$herdhex\.sig$" "$work/herd.upstream" && has -E "^evidence 1 GET .*/blobs/$herdsig$" "$work/herd.upstream" &&
  ! awk '$1 == "evidence" && $2 != 1 { bad = 1 } END { exit !bad }' "$work/herd.upstream" &&
  ok "every piece of the herd's evidence fetched once upstream ($(grep -c '^evidence' "$work/herd.upstream") requests)" ||
  bad "the herd's evidence was not fetched exactly once each upstream"
# The subject manifest's bytes are not evidence: a replica that takes
# another's verdict fetches them for its waiting requests (not asserted).
sub=$(awk '$1 == "subject" { s += $2 } END { print s + 0 }' "$work/herd.upstream")
echo "  the herd's manifest itself: fetched $sub time(s) upstream for 900 clients"
again=$(verifications)
for i in 0 1 2; do manifest "${PROXY[$i]}" herd /dev/null >/dev/null; done
[ "$(verifications)" = "$again" ] && ok "the herd digest again on every replica: no new verification" || bad "the herd digest verified again"
# A digest verified by one replica costs the others nothing: the verdict
# is in Redis.
v0=$(verifications)
for i in 1 2; do manifest "${PROXY[$i]}" hop1 "$work/out" >/dev/null; done
[ "$(verifications)" = "$v0" ] && ok "a digest verified on replica 0 is allowed by replicas 1 and 2 without verifying" || bad "replicas 1 and 2 verified a digest replica 0 had verified"

phase "the replica verifying a digest killed mid-verification"
# The spy holds the first evidence request for the kill image 4 s. The
# replica that took the lease is found by its "led" count and killed with
# SIGKILL: nothing releases its lease, which expires (5 s at most); one
# of the others takes it over and verifies, the third follows.
declare -a led0 took0 timed0
for i in 0 1 2; do led0[$i]=$(flight "$i" led) took0[$i]=$(flight "$i" took_over) timed0[$i]=$(flight "$i" timed_out); done
kill_t0=$(date +%s%N)
"$work/load" herd -n 20 -timeout 30s -repo e2e/scale/kill -digest "${D[kill]}" "${PROXY[@]}" >"$work/kill.out" 2>"$work/kill.err" & kill_load=$!
holder=
for _ in $(seq 150); do
  for i in 0 1 2; do [ "$(flight "$i" led)" -gt "${led0[$i]}" ] && holder=$i; done
  [ -n "$holder" ] && break
  sleep 0.02
done
takeover_ms=
if [ -z "$holder" ]; then
  bad "no replica took the lease for the kill image"; wait "$kill_load"
else
  lease=$(redis_cli --scan --pattern "e2e-$RUN:v1:lease:*" | head -1)
  lv=$(redis_cli get "$lease" 2>/dev/null); pttl=$(redis_cli pttl "$lease" 2>/dev/null)
  [ -n "$lease" ] && has -F "\"r\":\"$(cat /proc/sys/kernel/hostname)\"" <<<"$lv" && [ "${pttl:--1}" -gt 0 ] &&
    ok "replica $holder holds the lease: ${lease#e2e-$RUN:} naming host $(cat /proc/sys/kernel/hostname), expiring in ${pttl} ms" ||
    bad "no lease in Redis while replica $holder verifies (key '$lease', value '$lv', pttl '$pttl')"
  kill -9 "${PCPID[$holder]}"; wait "${PCPID[$holder]}" 2>/dev/null
  kill_ms=$(( ($(date +%s%N) - kill_t0) / 1000000 ))
  echo "  replica $holder killed $kill_ms ms after the requests started"
  wait "$kill_load"
  sed 's/^/  /' "$work/kill.out"
  took=0 timed=0 max=0 good=0
  for i in 0 1 2; do
    [ "$i" = "$holder" ] && continue
    line=$(grep "^target ${PROXY[$i]} " "$work/kill.out")
    m=$(sed -n 's/.* max_ms=\([0-9]*\).*/\1/p' <<<"$line")
    [ "${m:-0}" -gt "$max" ] && max=$m
    has -E ' ok=20 failed=0 ' <<<"$line" && good=$((good+1))
    took=$((took + $(flight "$i" took_over) - ${took0[$i]})) timed=$((timed + $(flight "$i" timed_out) - ${timed0[$i]}))
  done
  takeover_ms=$max
  [ "$good" = 2 ] && ok "the two other replicas answered all their 40 requests: 200 with the pushed manifest" || { bad "the other replicas failed requests after the kill"; show "$work/kill.err" 5; }
  [ "$max" -le 9000 ] && ok "they answered within verify_timeout + 1 s of the start: $max ms" || bad "they took $max ms (verify_timeout 8 s)"
  [ "$took" = 1 ] && [ "$timed" = 0 ] && ok "one took the lease over once it expired, none waited the verify timeout" ||
    bad "after the kill: took_over $took, timed_out $timed (want 1 and 0)"
  [ "$(grep -c 'rr: holding' "$work/spy.log")" = 1 ] && ok "only the killed replica's evidence request was held" || bad "the spy held $(grep -c 'rr: holding' "$work/spy.log") requests"
  [ -z "$(redis_cli --scan --pattern "e2e-$RUN:v1:lease:*")" ] && ok "no lease left in Redis" || bad "a lease is left in Redis"
  start_replica "$holder"; await_replica "$holder"; start_fronts
fi

redis_stop() {
  kill "$redis_pid"; wait "$redis_pid" 2>/dev/null
  for _ in $(seq 50); do owns_port "$redis_pid" "$redis_port" || break; sleep 0.1; done
}
# img KEY: a "load nodes" image argument.
img() { echo "e2e/scale/$1:v1@${D[$1]}"; }
# nodes FRONT NAME ARGS...: six nodes pulling through FRONT until
# $work/phase.NAME says stop; the report goes to $work/NAME.out.
nodes() {
  local front=$1 name=$2; shift 2
  echo before >"$work/phase.$name"
  "$work/load" nodes -front "$front" -nodes 6 -phase-file "$work/phase.$name" -max-duration 90s \
    -unsigned e2e/scale/unsigned:v1 -unsigned-blob "e2e/scale/unsigned@$ul" "$@" >"$work/$name.out" 2>"$work/$name.err" & nodes_pid=$!
}
# outage_for START: sleeps until 4 s after START (date +%s%N).
outage_for() { local left=$(( 4000 - ($(date +%s%N) - $1) / 1000000 )); [ "$left" -gt 0 ] && sleep "$(printf '%d.%03d' $((left/1000)) $((left%1000)))"; }

phase "redis-server stopped while six nodes pull, each kept on one replica (sessionAffinity: ClientIP)"
nodes "$RRA" aff -image "$(img aff-w1)" -image "$(img aff-w2)" -fresh "$(img aff-f1)" -fresh "$(img aff-f2)" -fresh "$(img aff-f3)" -fresh "$(img aff-f4)"
sleep 1.5
redis_stop
echo outage >"$work/phase.aff"
out_t0=$(date +%s%N)
for i in 0 1 2; do
  c=$(manifest "${PROXY[$i]}" outage "$work/out")
  [ "$c" = 200 ] && [ "sha256:$(sha "$work/out")" = "${D[outage]}" ] && ok "redis down: replica $i verifies a signed digest alone: 200" || { bad "redis down: signed on replica $i: $c"; show "$work/out" 2; }
  c=$(blob "${PROXY[$i]}" outage "$(layer_of "$work/out" 2>/dev/null || echo sha256:0)" "$work/l.blob")
  [ "$c" = 200 ] && ok "redis down: replica $i serves the layer of what it verified: 200" || bad "redis down: layer on replica $i: $c"
  c=$(manifest "${PROXY[$i]}" unsigned "$work/out")
  [ "$c" = 403 ] && ok "redis down: unsigned still denied by replica $i: 403" || bad "redis down: unsigned on replica $i: $c"
  # A layer this replica never opened cannot be decided without Redis:
  # not served, and not denied either (it may be another replica's).
  c=$(curl -s -D "$work/hdr" -o "$work/out" -w '%{http_code}' "http://${PROXY[$i]}/v2/e2e/scale/unsigned/blobs/$ul")
  tr -d '\r' <"$work/hdr" >"$work/hdr.txt"
  [ "$c" = 503 ] && has -ix 'retry-after: 1' "$work/hdr.txt" && has -ix 'connection: close' "$work/hdr.txt" && has -F '"UNAVAILABLE"' "$work/out" &&
    ok "redis down: a layer replica $i never opened is not served: 503 UNAVAILABLE, Retry-After: 1, Connection: close" ||
    { bad "redis down: unopened layer on replica $i: $c"; show "$work/hdr" 8; }
  c=$(curl -s -o "$work/ready" -w '%{http_code}' "http://${ADMIN[$i]}/readyz")
  [ "$c" = 200 ] && ok "redis down: replica $i stays ready" || { bad "redis down: replica $i /readyz $c"; show "$work/ready" 2; }
  n=$(curl -fsS "http://${ADMIN[$i]}/metrics" | awk '$1 ~ /^portcullis_shared_errors_total/ { s += $2 } END { print int(s) }')
  [ "${n:-0}" -gt 0 ] && ok "redis down: replica $i counts shared errors ($n)" || bad "redis down: replica $i counts no shared errors"
done
outage_for "$out_t0"

phase "redis-server restarted"
redis_start
echo after >"$work/phase.aff"
# A replica skips Redis for a short back-off after repeated failures and
# resumes at its first call after it: each replica gets requests (fresh
# digests, so Redis is asked) until all report portcullis_shared_up 1.
shared_up() { curl -fsS "http://${ADMIN[$1]}/metrics" | awk '$1 == "portcullis_shared_up" { print int($2) }'; }
up=0 n=0
for k in restart1 restart2 restart3 restart4; do
  sleep 1
  for i in 0 1 2; do manifest "${PROXY[$i]}" "$k" /dev/null >/dev/null; done
  up=0; for i in 0 1 2; do [ "$(shared_up "$i")" = 1 ] && up=$((up+1)); done
  [ "$up" = 3 ] && break
done
[ "$up" = 3 ] && ok "redis back: every replica uses it again (portcullis_shared_up 1)" || bad "redis back: $up of 3 replicas use it again"
echo stop >"$work/phase.aff"; wait "$nodes_pid"
sed 's/^/  nodes: /' "$work/aff.out"
aff_pulls=$(field total pulls "$work/aff.out") aff_failed=$(field total failed "$work/aff.out")
aff_out=$(field outage pulls "$work/aff.out") aff_fresh=$(field outage fresh "$work/aff.out")
[ "${aff_failed:-1}" = 0 ] && [ "${aff_pulls:-0}" -gt 0 ] && ok "affinity: no failed pull of a signed image ($aff_pulls pulls, $aff_out during the outage)" ||
  { bad "affinity: $aff_failed of $aff_pulls signed pulls failed"; show "$work/aff.err" 5; }
[ "${aff_fresh:-0}" -gt 0 ] && ok "affinity: $aff_fresh pulls during the outage of images no replica had seen" || bad "affinity: no new image pulled during the outage"
[ "$(field total unsigned_served "$work/aff.out")" = 0 ] && [ "$(field total unsigned_other "$work/aff.out")" = 0 ] && [ "$(field total unsigned "$work/aff.out")" -gt 0 ] &&
  ok "affinity: unsigned content never served ($(field total unsigned "$work/aff.out") requests)" || bad "affinity: unsigned content served or answered wrongly"
[ "$(field total s503_no_retry_after "$work/aff.out")" = 0 ] && ok "affinity: every 503 had a Retry-After" || bad "affinity: a 503 without Retry-After"
c=$(manifest "${PROXY[0]}" restart5 "$work/m.json")
c2=$(blob "${PROXY[1]}" restart5 "$(layer_of "$work/m.json" 2>/dev/null || echo sha256:0)" "$work/l.blob")
[ "$c" = 200 ] && [ "$c2" = 200 ] && ok "redis back: sharing resumed (a fresh manifest on replica 0, its layer on replica 1: 200)" ||
  bad "redis back: a fresh manifest on replica 0 ($c), its layer on replica 1: $c2"
# hop3's manifest was served by replica 2 before the restart, its layer by
# replica 0; replica 1 has seen neither. A Redis restarted empty must not
# leave replica 1 unable to serve the layer of a manifest replica 2 serves.
c=$(manifest "${PROXY[2]}" hop3 "$work/m.json")
c2=$(blob "${PROXY[1]}" hop3 "$(layer_of "$work/m.json" 2>/dev/null || echo sha256:0)" "$work/l.blob")
[ "$c" = 200 ] && [ "$c2" = 200 ] && ok "redis back (empty): a manifest served before the restart on replica 2, its layer on replica 1: 200" ||
  bad "redis back (empty): a manifest served before the restart on replica 2 ($c), its layer on replica 1: $c2"
rm -rf "$work/oci"
crane pull --format oci "$RR/e2e/scale/restart6:v1" "$work/oci" >"$work/out" 2>&1 && ok "redis back: crane pull of a fresh image over the front" || { bad "redis back: crane pull over the front"; show "$work/out" 3; }

phase "redis-server stopped while six nodes pull, every request to the next replica"
# Without affinity a layer often reaches a replica that never served its
# manifest: during the outage that replica cannot decide it and answers
# 503 with Retry-After; the nodes retry (as crane and containerd do) and
# the retry reaches another replica.
nodes "$RR" rr -retries 5 -image "$(img rr-w1)" -image "$(img rr-w2)" -fresh "$(img rr-f1)" -fresh "$(img rr-f2)" -fresh "$(img rr-f3)" -fresh "$(img rr-f4)"
sleep 1.5
redis_stop
echo outage >"$work/phase.rr"
outage_for "$(date +%s%N)"
redis_start
echo after >"$work/phase.rr"
up=0
for _ in $(seq 40); do
  up=0; for i in 0 1 2; do [ "$(shared_up "$i")" = 1 ] && up=$((up+1)); done
  [ "$up" = 3 ] && break
  sleep 0.25
done
[ "$up" = 3 ] && ok "redis back: every replica uses it again under load" || bad "redis back: $up of 3 replicas use it again"
sleep 1
echo stop >"$work/phase.rr"; wait "$nodes_pid"
sed 's/^/  nodes: /' "$work/rr.out"
rr_pulls=$(field total pulls "$work/rr.out") rr_failed=$(field total failed "$work/rr.out") rr_out=$(field outage pulls "$work/rr.out")
rr_503=$(field total s503 "$work/rr.out") rr_retries=$(field total retries "$work/rr.out")
[ "$(field total unsigned_served "$work/rr.out")" = 0 ] && [ "$(field total unsigned_other "$work/rr.out")" = 0 ] && [ "$(field total unsigned "$work/rr.out")" -gt 0 ] &&
  ok "round robin: unsigned content never served, its manifest always 403 ($(field total unsigned "$work/rr.out") requests)" || bad "round robin: unsigned content served or answered wrongly"
[ "$(field total signed_403 "$work/rr.out")" = 0 ] && [ "$(field total other_fail "$work/rr.out")" = 0 ] && [ "$(field total s503_no_retry_after "$work/rr.out")" = 0 ] &&
  ok "round robin: no 403 for signed content; every failure a 503 with Retry-After" || { bad "round robin: signed content answered otherwise than 200 or 503 with Retry-After"; show "$work/rr.err" 5; }
[ "${rr_503:-0}" -gt 0 ] && ok "round robin: the outage made replicas answer $rr_503 undecided layer request(s) 503" || bad "round robin: no 503 during the outage (nothing was exercised)"
[ "${rr_failed:-1}" = 0 ] && [ "${rr_pulls:-0}" -gt 0 ] && ok "round robin: every pull succeeded retrying 503s ($rr_pulls pulls, $rr_out during the outage, $rr_retries retries)" ||
  { bad "round robin: $rr_failed of $rr_pulls signed pulls failed with retries"; show "$work/rr.err" 5; }
c=$(manifest "${PROXY[0]}" restart7 "$work/m.json")
c2=$(blob "${PROXY[1]}" restart7 "$(layer_of "$work/m.json" 2>/dev/null || echo sha256:0)" "$work/l.blob")
[ "$c" = 200 ] && [ "$c2" = 200 ] && ok "redis back: sharing resumed again (a fresh manifest on replica 0, its layer on replica 1: 200)" ||
  bad "redis back: a fresh manifest on replica 0 ($c), its layer on replica 1: $c2"
for i in 0 1 2; do
  kill -0 "${PCPID[$i]}" 2>/dev/null && ok "replica $i still running" || bad "replica $i exited"
done

printf '\n[scale] herd of 900 (300 per replica) on one new digest: %s verification(s), slowest answer %s ms; upstream: %s\n' "$herd" "${herd_ms:-?}" "$herd_upstream"
printf '[scale] lease holder killed: the others answered within %s ms of the start (verify_timeout 8 s)\n' "${takeover_ms:-?}"
printf '[scale] redis stopped 4 s under load, affinity: %s pulls, %s failed (%s during the outage)\n' "${aff_pulls:-?}" "${aff_failed:-?}" "${aff_out:-?}"
printf '[scale] redis stopped 4 s under load, round robin: %s pulls, %s failed (%s during the outage), %s 503s, %s retries\n' "${rr_pulls:-?}" "${rr_failed:-?}" "${rr_out:-?}" "${rr_503:-?}" "${rr_retries:-?}"
printf '[scale] scale: %d passed, %d failed (%ss)\n' "$passed" "$failed" "$(( $(date +%s) - started ))"
[ "$failed" -eq 0 ]
