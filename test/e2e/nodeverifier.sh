#!/usr/bin/env bash
# End-to-end check of the node-side verifier: a containerd 2.x built from
# its module (install.sh containerd2) runs "portcullis node-verifier" through
# its image verifier plugin (io.containerd.image-verifier.v1.bindir) on every
# "ctr image pull" through the transfer service. The images come straight
# from a registry that Portcullis serves but that no hosts.toml mirrors, so
# only the verifier stands between the node and the registry:
#   - a cosign-signed image is accepted;
#   - an unsigned one is rejected, with the proxy's reason in ctr's error;
#   - an image from a registry Portcullis does not serve is rejected;
#   - with the proxy stopped, pulls are rejected (fail closed), and accepted
#     with a loud reason under fail_open;
#   - a listener that accepts and never answers is not "unreachable": the
#     verifier's timeout rejects the pull even under fail_open.
# The verifier's files are the ones "portcullis mirror-config containerd
# --verifier" generates. Prints "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

work=$(mktemp -d /tmp/portcullis-nv.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export TUF_ROOT="$work/tuf" REGCTL_CONFIG="$work/regctl.json" COSIGN_PASSWORD="" HOME="$work/home"
mkdir -p "$HOME"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
cp "$PORTCULLIS" "$work/portcullis" && PORTCULLIS=$work/portcullis
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  # containerd's snapshots may hold mounts under its root.
  if [ -d "$work/ctrd" ]; then
    grep -F " $work/ctrd/" /proc/self/mounts | cut -d' ' -f2 | sort -r | while read -r m; do umount "$m" 2>/dev/null; done
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok()   { passed=$((passed+1)); printf '  ok    %s\n' "$*"; }
bad()  { failed=$((failed+1)); printf '  FAIL  %s\n' "$*"; }
phase() { printf '\n[nodeverifier] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[nodeverifier] ABORT: %s\n' "$*" >&2; exit 1; }
must() {
  local what=$1; shift
  if ! "$@" >"$work/must.out" 2>&1; then show "$work/must.out" 10 >&2; die "$what failed"; fi
}
for t in containerd2 ctr2 olareg crane cosign3; do
  command -v "$t" >/dev/null || die "$t not found in $E2E_BIN (test/e2e/install.sh all)"
done

# image REG REPO: pushes REPO:v1, a one-layer linux/amd64 OCI image of fresh
# random bytes, and prints its digest.
image() {
  local dir="$work/payload/$2" out
  mkdir -p "$dir"
  head -c 4096 /dev/urandom > "$dir/blob.bin"
  tar -C "$dir" -cf "$dir.tar" blob.bin
  crane append --oci-empty-base -f "$dir.tar" -t "$1/$2:v1" >/dev/null 2>"$work/must.out" || { show "$work/must.out" >&2; return 1; }
  out=$(crane mutate --set-platform linux/amd64 "$1/$2:v1" 2>"$work/must.out") || { show "$work/must.out" >&2; return 1; }
  echo "${out##*@}"
}

phase "registries and content (run $RUN)"
olareg serve --addr 127.0.0.1 --port 0 --store-type mem >"$work/ola.log" 2>&1 & ola_pid=$!; pids+=("$ola_pid")
olareg serve --addr 127.0.0.1 --port 0 --store-type mem >"$work/other.log" 2>&1 & other_pid=$!; pids+=("$other_pid")
REG=127.0.0.1:$(await_port "$ola_pid" olareg) || die "olareg did not start"
OTHER=127.0.0.1:$(await_port "$other_pid" olareg) || die "olareg (other) did not start"
wait_http "http://$REG/v2/" && wait_http "http://$OTHER/v2/" || die "olareg does not answer"
cd "$work" || die "cd $work"
must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix release
SIGNED=$(image "$REG" "nv-$RUN/signed") || die "push signed"
UNSIGNED=$(image "$REG" "nv-$RUN/unsigned") || die "push unsigned"
ELSEWHERE=$(image "$OTHER" "nv-$RUN/signed") || die "push to the other registry"
must "cosign3 sign" cosign3 sign --key release.key --use-signing-config=false --tlog-upload=false -y "$REG/nv-$RUN/signed@$SIGNED"
must "cosign3 sign (other registry)" cosign3 sign --key release.key --use-signing-config=false --tlog-upload=false -y "$OTHER/nv-$RUN/signed@$ELSEWHERE"
echo "  registry $REG (served), $OTHER (not served); signed $SIGNED, unsigned $UNSIGNED"

phase "portcullis"
ADMIN_TOKEN="nv-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$ADMIN_TOKEN" > "$work/node.token"
chmod 600 "$work/node.token"
echo "node:$(printf '%s\n' "$ADMIN_TOKEN" | "$PORTCULLIS" token hash)" > "$work/admin-tokens" || die "token hash"
cat > "$work/portcullis.yaml" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
admin_auth: {tokens: admin-tokens}
upstreams:
  - {name: reg, url: "http://$REG", aliases: ["$REG"], insecure: true}
trust:
  - {name: release, keys: [release.pub]}
boundaries:
  - name: nodes
    match: {repositories: ["nv-$RUN/**"]}
    signatures:
      authorities: [{name: release, key: release}]
unmatched: deny
log: {level: info}
YML
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
"$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=("$pc_pid")
await_portcullis "$pc_pid" "$work/portcullis.log" || die "portcullis did not start"
echo "  proxy $PROXY, admin $ADMIN (pid $pc_pid)"

# The verdict API itself: authenticated, strict, never on the public port.
vapi="http://$ADMIN/v1/verdicts/$REG/nv-$RUN/signed@$SIGNED"
code=$(curl -s -o /dev/null -w '%{http_code}' "$vapi")
[ "$code" = 401 ] && ok "verdict API without a token: 401" || bad "verdict API without a token: $code"
code=$(curl -s -o "$work/v.json" -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" "$vapi")
if [ "$code" = 200 ] && has '"decision":"allow"' "$work/v.json"; then ok "verdict API: signed digest allowed"
else bad "verdict API signed: $code $(cat "$work/v.json")"; fi
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" "http://$ADMIN/v1/verdicts/$REG/nv-$RUN/signed:v1")
[ "$code" = 400 ] && ok "verdict API: a tag is refused (400)" || bad "verdict API with a tag: $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/v1/verdicts/$REG/nv-$RUN/signed@$SIGNED")
[ "$code" != 200 ] && ok "verdict API not on the public listener ($code)" || bad "verdict API answered on the public listener"

phase "containerd 2.x with the verifier"
BIN_DIR=$work/verifier-bin SETTINGS=$work/node-verifier.yaml
mkdir -p "$BIN_DIR" "$work/ctrd"
must "mirror-config containerd --verifier" "$PORTCULLIS" mirror-config containerd --verifier "http://$ADMIN" \
  --verifier-token-file "$work/node.token" --verifier-bin-dir "$BIN_DIR" --verifier-config "$SETTINGS" --portcullis-bin "$PORTCULLIS"
# The output is "# <path>" then the file, blank-line separated.
awk -v RS= -v dir="$work" '{ path = substr($0, 3, index($0, "\n") - 3); print substr($0, index($0, "\n") + 1) > (dir "/gen" NR); print path > (dir "/gen" NR ".path") }' "$work/must.out"
fragment='' script=''
for f in "$work"/gen[0-9]; do
  case "$(cat "$f.path")" in
    /etc/containerd/config.toml) fragment=$f ;;
    "$BIN_DIR/portcullis") cp "$f" "$BIN_DIR/portcullis"; chmod 755 "$BIN_DIR/portcullis"; script=$f ;;
    "$SETTINGS") cp "$f" "$SETTINGS" ;;
  esac
done
[ -n "$fragment" ] && [ -n "$script" ] && [ -s "$SETTINGS" ] || { show "$work/must.out" 40 >&2; die "mirror-config did not print the three verifier files"; }
has -F 'per_verifier_timeout = "10s"' "$fragment" || die "unexpected fragment: $(cat "$fragment")"
{
  cat <<TOML
version = 3
root = "$work/ctrd/root"
state = "$work/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "$work/ctrd/containerd.sock"
[ttrpc]
  address = "$work/ctrd/containerd.sock.ttrpc"
[debug]
  address = "$work/ctrd/debug.sock"
  level = "debug"
[metrics]
  address = ""
TOML
  # the generated fragment, as is
  grep -v '^#' "$fragment"
  cat <<TOML
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/amd64"
    snapshotter = "native"
TOML
} > "$work/ctrd/config.toml"
containerd2 --config "$work/ctrd/config.toml" >"$work/ctrd.log" 2>&1 & ctrd_pid=$!; pids+=("$ctrd_pid")
for _ in $(seq 100); do [ -S "$work/ctrd/containerd.sock" ] && break; kill -0 "$ctrd_pid" 2>/dev/null || break; sleep 0.1; done
CTR=(ctr2 --address "$work/ctrd/containerd.sock")
"${CTR[@]}" version >"$work/ctr-version" 2>&1 || { show "$work/ctrd.log" 10 >&2; die "containerd 2.x did not start"; }
has -E 'Version: +v?2\.' "$work/ctr-version" || die "not containerd 2.x: $(cat "$work/ctr-version")"
echo "  $(grep -m1 Version "$work/ctr-version" | tr -s ' ') (pid $ctrd_pid), bin_dir $BIN_DIR"

# pull REF: ctr image pull through the transfer service (ctr's default),
# straight from the registry: no --hosts-dir, no mirror.
pull() { "${CTR[@]}" image pull --plain-http --platform linux/amd64 "$1" >"$work/out" 2>&1; }

start=$(date +%s%N)
if pull "$REG/nv-$RUN/signed:v1"; then
  if "${CTR[@]}" image ls 2>/dev/null | grep -F "$REG/nv-$RUN/signed:v1" | has -F "$SIGNED"; then ok "signed image pulled directly from the registry: accepted by the verifier"
  else bad "signed image stored under another digest"; fi
else bad "signed image rejected"; show "$work/out" 5; fi
echo "  signed pull took $(( ($(date +%s%N) - start) / 1000000 )) ms"
if grep -F "$SIGNED" "$work/ctrd.log" | has -F 'Image verifier allowed pull'; then ok "containerd logged the verifier's judgement"
else bad "no 'Image verifier allowed pull' in containerd's log"; fi
# The verifier alone, as containerd runs it, on a cached verdict: its share
# of a pull's time.
desc="{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$SIGNED\",\"size\":1}"
start=$(date +%s%N)
for _ in $(seq 20); do
  echo "$desc" | "$BIN_DIR/portcullis" -name "$REG/nv-$RUN/signed:v1" -digest "$SIGNED" -stdin-media-type application/vnd.oci.descriptor.v1+json >/dev/null || bad "direct verifier run rejected the signed digest"
done
echo "  node-verifier run alone (cached verdict): $(( ($(date +%s%N) - start) / 20000000 )) ms per run, mean of 20"

if pull "$REG/nv-$RUN/unsigned:v1"; then bad "unsigned image pulled (the verifier accepted it)"
elif has -F 'image verifier bindir blocked pull' "$work/out" && has -F 'portcullis: rejected: denied' "$work/out" && has -F 'no signatures found' "$work/out"; then
  ok "unsigned image rejected with the proxy's reason: $(grep -o 'portcullis: rejected: denied[^"]*' "$work/out" | head -1 | cut -c1-110)…"
else bad "unsigned image rejected without the proxy's reason"; show "$work/out" 5; fi
if "${CTR[@]}" image ls -q 2>/dev/null | has -F "nv-$RUN/unsigned"; then bad "containerd stored the rejected image"; else ok "containerd did not store the rejected image"; fi
if grep '"decision":"deny"' "$work/portcullis.log" | has -F "$UNSIGNED"; then ok "the proxy audited the node's question as a deny"
else bad "no deny decision for $UNSIGNED in the proxy's log"; fi

if pull "$OTHER/nv-$RUN/signed:v1"; then bad "image from a registry the proxy does not serve was accepted"
elif has -F 'unknown registry' "$work/out"; then ok "a registry the proxy does not serve is rejected (unknown registry)"
else bad "other registry rejected without the reason"; show "$work/out" 5; fi

phase "proxy stopped"
kill "$pc_pid"; wait "$pc_pid" 2>/dev/null
for _ in $(seq 50); do curl -s -o /dev/null "http://$ADMIN/healthz" 2>/dev/null || break; sleep 0.1; done
"${CTR[@]}" image rm "$REG/nv-$RUN/signed:v1" >/dev/null 2>&1
if pull "$REG/nv-$RUN/signed:v1"; then bad "pull accepted while the proxy is down (fail closed expected)"
elif has -F 'cannot be reached (fail closed)' "$work/out"; then ok "proxy down: the pull is rejected (fail closed)"
else bad "proxy down: rejected without the reason"; show "$work/out" 5; fi
sed -i 's/^fail_open: false/fail_open: true/' "$SETTINGS"
has '^fail_open: true' "$SETTINGS" || die "could not turn fail_open on"
if pull "$REG/nv-$RUN/signed:v1"; then
  if grep -F "$SIGNED" "$work/ctrd.log" | has -F 'ACCEPTED WITHOUT VERIFICATION'; then ok "proxy down, fail_open: accepted, and containerd logged that nothing was verified"
  else bad "fail_open accept not logged loudly"; fi
else bad "proxy down, fail_open: the pull was rejected"; show "$work/out" 5; fi
if pull "$REG/nv-$RUN/unsigned:v1"; then ok "fail_open lets even unsigned images through while the proxy is down (break-glass)"
else bad "fail_open: unsigned rejected while the proxy is down"; show "$work/out" 3; fi

# A listener that accepts and never answers: reached, so not "unreachable";
# the verifier's own timeout rejects the pull, fail_open or not.
python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True)
conns = []
while True:
    conns.append(s.accept()[0])' >"$work/hung.log" 2>&1 & hung_pid=$!; pids+=("$hung_pid")
HUNG=127.0.0.1:$(await_port "$hung_pid" "hung listener") || die "the hung listener did not start"
sed -i -e "s|^admin_url: .*|admin_url: \"http://$HUNG\"|" -e 's|^timeout: .*|timeout: 1s|' "$SETTINGS"
start=$(date +%s%N)
if pull "$REG/nv-$RUN/signed:v1"; then bad "a proxy that never answers let the pull through (fail_open must not cover it)"
elif has -F 'no verdict from the Portcullis admin API' "$work/out"; then ok "a proxy that accepts and never answers: rejected after the verifier's timeout, even with fail_open ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
else bad "hung proxy: rejected without the reason"; show "$work/out" 5; fi

printf '\n%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
