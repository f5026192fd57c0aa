#!/usr/bin/env bash
# Scale-out end to end: a real registry, a real redis-server and three
# portcullis replicas sharing it (shared.redis), behind a round-robin
# front (test/e2e/rr) that sends each request to the next replica, as a
# Kubernetes Service spreads a pull over several pods. Checks that pulls
# spread over the replicas succeed with the pushed bytes, that a layer is
# served by one replica right after another served its manifest, that
# unsigned content is denied by every replica, how many verifications a
# herd on one digest costs across all replicas, and that stopping Redis
# neither opens nor breaks the proxies and restarting it resumes sharing.
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
export HOME="$work/home" DOCKER_CONFIG="$work/home/.docker" COSIGN_PASSWORD="" TUF_ROOT="$work/tuf"
mkdir -p "$HOME"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
for tool in docker-registry redis-server crane cosign2 cosign3 curl python3 go; do
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
wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

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
signed=(pull pull3 ctrd hop1 hop2 hop3 herd outage restart1 restart2 restart3 restart4 restart5 restart6)
for k in "${signed[@]}" unsigned; do image "$k" "e2e/scale/$k"; done
for k in "${signed[@]}"; do
  if [ "$k" = pull3 ]; then
    spawn must "cosign3 sign $k" cosign3 sign --key v3.key --use-signing-config=false --tlog-upload=false -y "$DIST/e2e/scale/$k@${D[$k]}"
  else
    spawn must "cosign2 sign $k" cosign2 sign --key v2.key --tlog-upload=false -y "$DIST/e2e/scale/$k@${D[$k]}"
  fi
done
join
echo "  ${#signed[@]} signed images and one unsigned in e2e/scale/"

phase "three replicas sharing redis"
cat > "$work/portcullis.yaml" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: dist, url: "http://$DIST", insecure: true}
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
shared:
  redis: {addr: "127.0.0.1:$redis_port", password_env: E2E_REDIS_PASSWORD, key_prefix: "e2e-$RUN:"}
log: {level: info}
YML
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
declare -a PROXY ADMIN PCPID
for i in 0 1 2; do
  "$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.$i.log" 2>&1 & PCPID[$i]=$!; pids+=(${PCPID[$i]})
done
logged_addr() { sed -n "s/.*\"msg\":\"$1\".*\"listen\":\"\([^\"]*\)\".*/\1/p" "$2" | head -1; }
for i in 0 1 2; do
  for _ in $(seq 200); do
    PROXY[$i]=$(logged_addr serving "$work/portcullis.$i.log") ADMIN[$i]=$(logged_addr admin "$work/portcullis.$i.log")
    [ -n "${PROXY[$i]}" ] && [ -n "${ADMIN[$i]}" ] && break
    kill -0 "${PCPID[$i]}" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "${PROXY[$i]}" ] && [ -n "${ADMIN[$i]}" ] || { show "$work/portcullis.$i.log" 20 >&2; die "replica $i did not log its addresses"; }
  owns_port "${PCPID[$i]}" "${PROXY[$i]##*:}" && owns_port "${PCPID[$i]}" "${ADMIN[$i]##*:}" || die "replica $i (PID ${PCPID[$i]}) does not hold ${PROXY[$i]} and ${ADMIN[$i]}"
  wait_http "http://${ADMIN[$i]}/readyz" || { show "$work/portcullis.$i.log" 20 >&2; die "replica $i not ready"; }
  has -F '"shared state: redis"' "$work/portcullis.$i.log" || die "replica $i did not turn shared state on"
  echo "  replica $i: proxy ${PROXY[$i]}, admin ${ADMIN[$i]} (pid ${PCPID[$i]})"
done

must "go build test/e2e/rr" bash -c "cd '$root' && go build -o '$work/rr' ./test/e2e/rr"
"$work/rr" -listen 127.0.0.1:0 "http://${PROXY[0]}" "http://${PROXY[1]}" "http://${PROXY[2]}" >"$work/rr.log" 2>&1 & rr_pid=$!; pids+=($rr_pid)
for _ in $(seq 100); do RR=$(sed -n 's/^listening //p' "$work/rr.log"); [ -n "$RR" ] && break; sleep 0.05; done
[ -n "$RR" ] && owns_port "$rr_pid" "${RR##*:}" || die "round-robin front did not start: $(tail -3 "$work/rr.log")"
echo "  round-robin front $RR (pid $rr_pid)"

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
  mkdir -p "$work/ctrd" "$work/certs.d/$RR"
  cat > "$work/ctrd/config.toml" <<TOML
version = 2
root = "$work/ctrd/root"
state = "$work/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctrd/containerd.sock"
TOML
  cat > "$work/certs.d/$RR/hosts.toml" <<TOML
server = "http://$RR"
[host."http://$RR"]
  capabilities = ["pull", "resolve"]
TOML
  containerd --config "$work/ctrd/config.toml" >"$work/ctrd.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ -S "$work/ctrd/containerd.sock" ] && break; sleep 0.1; done
  CTR=(ctr --address "$work/ctrd/containerd.sock")
  if "${CTR[@]}" version >/dev/null 2>&1; then
    if "${CTR[@]}" images pull --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/ctrd:v1" >"$work/out" 2>&1; then
      "${CTR[@]}" images ls | grep -F "$RR/e2e/scale/ctrd:v1" | has -F "${D[ctrd]}" &&
        ok "ctr pull over three replicas: containerd stored the pushed digest" || bad "ctr pull over three replicas: containerd's digest differs"
    else bad "ctr pull over three replicas"; show "$work/out" 5; fi
    if "${CTR[@]}" images pull --plain-http --hosts-dir "$work/certs.d" "$RR/e2e/scale/unsigned:v1" >"$work/out" 2>&1; then
      bad "ctr pull of the unsigned image succeeded"
    else
      grep -Eq '403|[Ff]orbidden|DENIED' "$work/out" && ok "ctr pull of the unsigned image: 403" || { bad "ctr pull of the unsigned image failed without 403"; show "$work/out" 3; }
    fi
  else
    bad "containerd did not start: $(tail -3 "$work/ctrd.log")"
  fi
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

phase "herd: 30 concurrent requests for one never-seen digest over the front"
before=$(verifications)
hp=()
for n in $(seq 30); do
  crane manifest "$RR/e2e/scale/herd@${D[herd]}" >"$work/herd.$n.out" 2>&1 & hp+=($!)
done
herd_failed=0
for p in "${hp[@]}"; do wait "$p" || herd_failed=$((herd_failed+1)); done
after=$(verifications)
herd=$((after - before))
echo "  verifications for the herd, all replicas: $herd"
[ "$herd_failed" = 0 ] && ok "all 30 herd requests allowed" || bad "$herd_failed of 30 herd requests failed"
[ "$herd" -ge 1 ] && [ "$herd" -le 3 ] && ok "herd verified $herd time(s) in total (at most once per replica)" || bad "herd verified $herd times"
again=$(verifications)
crane manifest "$RR/e2e/scale/herd@${D[herd]}" >/dev/null 2>&1; crane manifest "$RR/e2e/scale/herd@${D[herd]}" >/dev/null 2>&1; crane manifest "$RR/e2e/scale/herd@${D[herd]}" >/dev/null 2>&1
[ "$(verifications)" = "$again" ] && ok "the herd digest again on every replica: no new verification" || bad "the herd digest verified again"
# A digest verified by one replica costs the others nothing: the verdict
# is in Redis.
v0=$(verifications)
for i in 1 2; do manifest "${PROXY[$i]}" hop1 "$work/out" >/dev/null; done
[ "$(verifications)" = "$v0" ] && ok "a digest verified on replica 0 is allowed by replicas 1 and 2 without verifying" || bad "replicas 1 and 2 verified a digest replica 0 had verified"

phase "redis-server stopped"
kill "$redis_pid"; wait "$redis_pid" 2>/dev/null
for _ in $(seq 50); do owns_port "$redis_pid" "$redis_port" || break; sleep 0.1; done
for i in 0 1 2; do
  c=$(manifest "${PROXY[$i]}" outage "$work/out")
  [ "$c" = 200 ] && [ "sha256:$(sha "$work/out")" = "${D[outage]}" ] && ok "redis down: replica $i verifies a signed digest alone: 200" || { bad "redis down: signed on replica $i: $c"; show "$work/out" 2; }
  c=$(blob "${PROXY[$i]}" outage "$(layer_of "$work/out" 2>/dev/null || echo sha256:0)" "$work/l.blob")
  [ "$c" = 200 ] && ok "redis down: replica $i serves the layer of what it verified: 200" || bad "redis down: layer on replica $i: $c"
  c=$(manifest "${PROXY[$i]}" unsigned "$work/out")
  [ "$c" = 403 ] && ok "redis down: unsigned still denied by replica $i: 403" || bad "redis down: unsigned on replica $i: $c"
  c=$(blob "${PROXY[$i]}" unsigned "$ul" "$work/out")
  [ "$c" = 403 ] && ok "redis down: unsigned layer still denied by replica $i: 403" || bad "redis down: unsigned layer on replica $i: $c"
  c=$(curl -s -o "$work/ready" -w '%{http_code}' "http://${ADMIN[$i]}/readyz")
  [ "$c" = 200 ] && ok "redis down: replica $i stays ready" || { bad "redis down: replica $i /readyz $c"; show "$work/ready" 2; }
  n=$(curl -fsS "http://${ADMIN[$i]}/metrics" | awk '$1 ~ /^portcullis_shared_errors_total/ { s += $2 } END { print int(s) }')
  [ "${n:-0}" -gt 0 ] && ok "redis down: replica $i counts shared errors ($n)" || bad "redis down: replica $i counts no shared errors"
done

phase "redis-server restarted"
redis_start
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
for i in 0 1 2; do
  kill -0 "${PCPID[$i]}" 2>/dev/null && ok "replica $i still running" || bad "replica $i exited"
done

printf '\n[scale] verifications for a herd of 30 over 3 replicas: %s\n' "$herd"
printf '[scale] scale: %d passed, %d failed (%ss)\n' "$passed" "$failed" "$(( $(date +%s) - started ))"
[ "$failed" -eq 0 ]
