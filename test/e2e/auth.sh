#!/usr/bin/env bash
# Client authentication end to end: a real registry, a real portcullis
# process with client auth on (htpasswd, static tokens, client
# certificates, an admin token) and real clients logging in with their
# usual flags: crane, oras, skopeo, regctl, containerd (ctr) and curl.
# Every client must be refused 401 without or with wrong credentials, pull
# with them, and be refused 403 outside its repositories. Prints
# "N passed, N failed".
#
# Verification is not under test here: the proxy allows unmatched
# repositories, so every 401 and 403 comes from client authentication.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-auth.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export HOME="$work/home" DOCKER_CONFIG="$work/home/.docker" REGCTL_CONFIG="$work/regctl.json"
mkdir -p "$HOME"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
for tool in docker-registry crane oras skopeo regctl curl openssl; do
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
phase() { printf '\n[auth] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die()  { printf '\n[auth] ABORT: %s\n' "$*" >&2; exit 1; }
must() {
  local what=$1; shift
  "$@" >"$work/must.out" 2>&1 || { show "$work/must.out" 10 >&2; die "$what failed"; }
}

# expect NAME WANT CMD...: CMD fails with output naming WANT (401/403 or
# the client's words for them), or succeeds when WANT is "ok".
expect() {
  local n=$1 want=$2; shift 2
  if "$@" >"$work/out" 2>&1; then
    [ "$want" = ok ] && ok "$n" || { bad "$n (succeeded, expected $want)"; show "$work/out" 3; }
    return
  fi
  if [ "$want" = ok ]; then bad "$n"; show "$work/out" 5; return; fi
  local pat
  case "$want" in
    401) pat='401|UNAUTHORIZED|[Uu]nauthorized|authentication required|basic credential not found' ;;
    403) pat='403|DENIED|[Dd]enied|[Ff]orbidden' ;;
    *) pat='.' ;;
  esac
  if grep -Eq "$pat" "$work/out"; then ok "$n"; else bad "$n (failed without $want)"; show "$work/out" 5; fi
}

phase "registry and content (run $RUN)"
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
declare -A D
for repo in e2e/team/app e2e/private/app; do
  head -c 4096 /dev/urandom > "$work/blob.bin"
  tar -C "$work" -cf "$work/layer.tar" blob.bin
  must "crane append $repo" crane append --oci-empty-base -f "$work/layer.tar" -t "$DIST/$repo:v1"
  D[$repo]=$(crane digest "$DIST/$repo:v1") || die "crane digest $repo"
done
echo "  registry $DIST (pid $dist_pid)"

phase "credentials and certificates"
cd "$work"
openssl_ca() { # NAME: a CA key and certificate
  must "openssl $1 CA" openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=portcullis e2e $1 CA" -keyout "$1-ca.key" -out "$1-ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
}
openssl_leaf() { # CA NAME SAN EKU: a certificate for SAN issued by CA
  must "openssl $2 key" openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$2.key" -out "$2.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$3" "$4" > "$2.ext"
  must "openssl $2 cert" openssl x509 -req -in "$2.csr" -CA "$1-ca.pem" -CAkey "$1-ca.key" -CAcreateserial -days 1 -extfile "$2.ext" -out "$2.pem"
}
openssl_ca server; openssl_ca client; openssl_ca rogue
openssl_leaf server server "IP:127.0.0.1,DNS:localhost" serverAuth
openssl_leaf client builder "DNS:builder.ci.e2e.local" clientAuth
openssl_leaf client stranger "DNS:builder.dev.e2e.local" clientAuth
openssl_leaf rogue forged "DNS:builder.ci.e2e.local" clientAuth
# Go clients read SSL_CERT_FILE, curl CURL_CA_BUNDLE.
export SSL_CERT_FILE=$work/server-ca.pem CURL_CA_BUNDLE=$work/server-ca.pem

ALICE_PW=alice-$RUN-pw CI_TOKEN=ci-$RUN-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n') ADMIN_TOKEN=adm-$RUN
printf '%s\n' "$ALICE_PW" | "$PORTCULLIS" token htpasswd alice > htpasswd || die "token htpasswd"
echo "ci:$(printf '%s\n' "$CI_TOKEN" | "$PORTCULLIS" token hash)" > tokens || die "token hash"
echo "ops:$(printf '%s\n' "$ADMIN_TOKEN" | "$PORTCULLIS" token hash)" > admin-tokens || die "token hash"
has -F "$ALICE_PW" htpasswd tokens admin-tokens && die "a secret is stored in clear"
has -F "$CI_TOKEN" htpasswd tokens admin-tokens && die "a secret is stored in clear"

base_config() {
  cat <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
tls: {cert: server.pem, key: server.key}
upstreams:
  - name: dist.e2e.local
    url: http://$DIST
    insecure: true
    auth: {username: e2e, password_env: E2E_UPSTREAM_PASSWORD}
default_upstream: dist.e2e.local
boundaries: []
unmatched: insecure-allow
log: {level: info}
YML
}
export E2E_UPSTREAM_PASSWORD=upstream-$RUN
base_config > no-clients.yaml
expect "config check refuses upstream credentials without client auth" fail \
  "$PORTCULLIS" config check no-clients.yaml
has -F "anyone who can reach the proxy" "$work/out" && ok "  ... and says why" || { bad "  ... without the reason"; show "$work/out" 3; }
{
  base_config
  cat <<YML
clients:
  htpasswd: htpasswd
  tokens: tokens
  mtls: {ca: client-ca.pem}
  access:
    - clients: [alice]
      repositories: ["e2e/team/**"]
    - clients: [ci]
    - certificates: {dns: ["*.ci.e2e.local"]}
      repositories: ["e2e/team/**"]
admin_auth: {tokens: admin-tokens}
YML
} > portcullis.yaml
echo 'alice:$apr1$abcdefgh$0123456789abcdefghijkl' > md5-htpasswd
sed 's#htpasswd: htpasswd#htpasswd: md5-htpasswd#' portcullis.yaml > md5.yaml
expect "config check refuses a non-bcrypt htpasswd" fail "$PORTCULLIS" config check md5.yaml
has -F "only bcrypt" "$work/out" && ok "  ... and says why" || { bad "  ... without the reason"; show "$work/out" 3; }
must "portcullis config check" "$PORTCULLIS" config check portcullis.yaml

"$PORTCULLIS" serve --config portcullis.yaml >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=($pc_pid)
await_portcullis "$pc_pid" "$work/portcullis.log" || die "portcullis did not start"
echo "  proxy https://$PROXY, admin $ADMIN (pid $pc_pid)"
TEAM=$PROXY/e2e/team/app:v1 PRIVATE=$PROXY/e2e/private/app:v1

phase "curl"
code() { curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$@"; }
c=$(code "https://$PROXY/v2/"); [ "$c" = 401 ] && ok "/v2/ without credentials: 401" || bad "/v2/ without credentials: $c"
curl -s -D - -o /dev/null "https://$PROXY/v2/" | tr -d '\r' | has -ix 'www-authenticate: Basic realm="portcullis"' &&
  ok "/v2/ challenges Basic realm=\"portcullis\"" || bad "/v2/ without the Basic challenge"
c=$(code -u "alice:$ALICE_PW" "https://$PROXY/v2/"); [ "$c" = 200 ] && ok "/v2/ as alice: 200" || bad "/v2/ as alice: $c"
c=$(code -u "alice:wrong" "https://$PROXY/v2/"); [ "$c" = 401 ] && ok "/v2/ with a wrong password: 401" || bad "/v2/ with a wrong password: $c"
c=$(code -H "Authorization: Bearer $CI_TOKEN" "https://$PROXY/v2/e2e/private/app/manifests/v1"); [ "$c" = 200 ] && ok "bearer token: 200" || bad "bearer token: $c"
c=$(code -u "alice:$ALICE_PW" "https://$PROXY/v2/e2e/private/app/manifests/v1"); [ "$c" = 403 ] && ok "alice outside her repositories: 403" || bad "alice outside her repositories: $c"
c=$(code -u "alice:$ALICE_PW" "https://$PROXY/v2/e2e/private/absent/manifests/v1"); [ "$c" = 403 ] && ok "alice on an absent repository outside hers: 403 (no existence leak)" || bad "absent repository: $c"

phase "crane"
expect "crane without login: 401" 401 crane digest "$TEAM"
must "crane auth login" crane auth login "$PROXY" -u alice -p "$ALICE_PW"
got=$(crane digest "$TEAM" 2>"$work/out") && [ "$got" = "${D[e2e/team/app]}" ] && ok "crane after login: the pushed digest" || { bad "crane after login: $got"; show "$work/out" 3; }
expect "crane pull after login" ok crane pull "$TEAM" "$work/crane.tar"
expect "crane outside alice's repositories: 403" 403 crane digest "$PRIVATE"
must "crane auth login (wrong password)" crane auth login "$PROXY" -u alice -p wrong
expect "crane with a wrong password: 401" 401 crane digest "$TEAM"
must "crane auth login (token)" crane auth login "$PROXY" -u ci -p "$CI_TOKEN"
expect "crane with the ci token as password" ok crane digest "$PRIVATE"
must "crane auth logout" crane auth logout "$PROXY"

phase "oras"
expect "oras without credentials: 401" 401 oras manifest fetch --ca-file server-ca.pem "$TEAM"
expect "oras -u -p" ok oras manifest fetch --ca-file server-ca.pem -u alice -p "$ALICE_PW" "$TEAM"
expect "oras wrong password: 401" 401 oras manifest fetch --ca-file server-ca.pem -u alice -p wrong "$TEAM"
expect "oras outside alice's repositories: 403" 403 oras manifest fetch --ca-file server-ca.pem -u alice -p "$ALICE_PW" "$PRIVATE"
must "oras login" oras login --ca-file server-ca.pem -u alice -p "$ALICE_PW" "$PROXY"
expect "oras pull after login" ok oras pull --ca-file server-ca.pem -o "$work/oras" "$TEAM"
must "oras logout" oras logout "$PROXY"

phase "skopeo"
mkdir -p "$work/skopeo-certs" && cp server-ca.pem "$work/skopeo-certs/ca.crt"
expect "skopeo without credentials: 401" 401 skopeo inspect --raw --no-creds --cert-dir "$work/skopeo-certs" "docker://$TEAM"
expect "skopeo --src-creds" ok skopeo copy --src-creds "alice:$ALICE_PW" --src-cert-dir "$work/skopeo-certs" "docker://$TEAM" "oci:$work/skopeo-oci:team"
expect "skopeo wrong password: 401" 401 skopeo copy --src-creds "alice:wrong" --src-cert-dir "$work/skopeo-certs" "docker://$TEAM" "oci:$work/skopeo-oci:wrong"
expect "skopeo outside alice's repositories: 403" 403 skopeo copy --src-creds "alice:$ALICE_PW" --src-cert-dir "$work/skopeo-certs" "docker://$PRIVATE" "oci:$work/skopeo-oci:private"
# A client certificate instead of a password: skopeo reads client.cert/.key.
mkdir -p "$work/skopeo-mtls" && cp server-ca.pem "$work/skopeo-mtls/ca.crt" && cp builder.pem "$work/skopeo-mtls/client.cert" && cp builder.key "$work/skopeo-mtls/client.key"
expect "skopeo with a client certificate" ok skopeo copy --src-no-creds --src-cert-dir "$work/skopeo-mtls" "docker://$TEAM" "oci:$work/skopeo-oci:mtls"

phase "regctl"
# regctl pings the registry after setting it and fails on the 401; the
# setting is stored all the same.
regctl registry set "$PROXY" --tls enabled --cacert "$(cat server-ca.pem)" >/dev/null 2>&1
expect "regctl without login: 401" 401 regctl manifest head "$TEAM"
must "regctl registry login" regctl registry login "$PROXY" -u alice -p "$ALICE_PW"
got=$(regctl manifest head "$TEAM" 2>"$work/out") && [ "$got" = "${D[e2e/team/app]}" ] && ok "regctl after login: the pushed digest" || { bad "regctl after login: $got"; show "$work/out" 3; }
expect "regctl outside alice's repositories: 403" 403 regctl manifest get "$PRIVATE"
# regctl checks the credentials at login (and stores them even so).
expect "regctl registry login with a wrong password: 401" 401 regctl registry login "$PROXY" -u alice -p wrong
expect "regctl with a wrong password: 401" 401 regctl manifest head "$TEAM"

phase "client certificates (curl)"
c=$(code --cert builder.pem --key builder.key "https://$PROXY/v2/e2e/team/app/manifests/v1"); [ "$c" = 200 ] && ok "certificate *.ci.e2e.local: 200" || bad "certificate *.ci.e2e.local: $c"
c=$(code --cert builder.pem --key builder.key "https://$PROXY/v2/e2e/private/app/manifests/v1"); [ "$c" = 403 ] && ok "certificate outside its repositories: 403" || bad "certificate outside its repositories: $c"
c=$(code --cert stranger.pem --key stranger.key "https://$PROXY/v2/e2e/team/app/manifests/v1"); [ "$c" = 401 ] && ok "certificate no access entry names: 401" || bad "certificate no entry names: $c"
# Under TLS 1.3 the client learns of the refusal only as a dropped
# connection; the proxy's log says why.
expect "certificate of an untrusted CA: refused" fail curl -sS -f --cert forged.pem --key forged.key "https://$PROXY/v2/e2e/team/app/manifests/v1"
has -F "certificate signed by unknown authority" "$work/portcullis.log" && ok "  ... in the TLS handshake" || bad "  ... but not in the handshake"

phase "containerd"
if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then
  bad "containerd not installed"
else
  mkdir -p "$work/certs.d/$PROXY"
  cat > "$work/certs.d/$PROXY/hosts.toml" <<TOML
server = "https://$PROXY"
[host."https://$PROXY"]
  capabilities = ["pull", "resolve"]
  ca = "$work/server-ca.pem"
TOML
  if start_containerd "$work/ctrd"; then
    expect "ctr pull without credentials: 401" 401 "${CTR[@]}" images pull --hosts-dir "$work/certs.d" "$TEAM"
    expect "ctr pull --user with a wrong password: 401" 401 "${CTR[@]}" images pull --hosts-dir "$work/certs.d" --user "alice:wrong" "$TEAM"
    expect "ctr pull --user" ok "${CTR[@]}" images pull --hosts-dir "$work/certs.d" --user "alice:$ALICE_PW" "$TEAM"
    "${CTR[@]}" images ls | grep -F "$TEAM" | has -F "${D[e2e/team/app]}" && ok "containerd stored the pushed digest" || bad "containerd's digest differs"
    expect "ctr pull outside alice's repositories: 403" 403 "${CTR[@]}" images pull --hosts-dir "$work/certs.d" --user "alice:$ALICE_PW" "$PRIVATE"
  else
    bad "containerd did not start: $(tail -3 "$work/ctrd.log")"
  fi
fi

phase "admin listener"
c=$(code "http://$ADMIN/healthz"); [ "$c" = 200 ] && ok "/healthz open: 200" || bad "/healthz: $c"
c=$(code "http://$ADMIN/v1/decisions"); [ "$c" = 401 ] && ok "/v1/decisions without a token: 401" || bad "/v1/decisions without a token: $c"
c=$(code "http://$ADMIN/metrics"); [ "$c" = 401 ] && ok "/metrics without a token: 401" || bad "/metrics without a token: $c"
c=$(code -H "Authorization: Bearer wrong" "http://$ADMIN/v1/decisions"); [ "$c" = 401 ] && ok "/v1/decisions with a wrong token: 401" || bad "/v1/decisions wrong token: $c"
curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "http://$ADMIN/v1/decisions" > "$work/decisions.json" 2>"$work/out" &&
  has -F '"principal":"password:alice"' "$work/decisions.json" && ok "decisions name the client (password:alice)" ||
  { bad "decisions without alice's identity"; show "$work/decisions.json" 3; }

phase "logs"
has -F '"principal":"password:alice"' "$work/portcullis.log" && ok "request lines name the client" || bad "request lines without the client identity"
leaked=0
for s in "$ALICE_PW" "$CI_TOKEN" "$ADMIN_TOKEN" "$(printf 'alice:%s' "$ALICE_PW" | base64 -w0)" "$E2E_UPSTREAM_PASSWORD"; do
  has -F -- "$s" "$work/portcullis.log" && leaked=1
done
[ "$leaked" = 0 ] && ok "no password or token in the proxy's log" || bad "a secret is in the proxy's log"

printf '\n[auth] %d passed, %d failed (%ss)\n' "$passed" "$failed" "$(( $(date +%s) - started ))"
[ "$failed" -eq 0 ]
