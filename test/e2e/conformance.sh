#!/usr/bin/env bash
# The OCI distribution-spec conformance suite (read-only: pull and content
# discovery) against two real upstreams directly and through a real
# portcullis process in front of them, compared test by test. Every test
# that passes directly must pass through the proxy, except the one
# deliberate difference: with blob gating on, a blob fetched before any
# manifest that references it is denied.
#
# Per upstream (distribution 2.8 without the referrers API, signed with
# cosign v2 legacy .sig; olareg with it, signed with cosign v3 bundles) the
# suite runs against three repositories:
#   conformance/repo1        an image, an index and its two children, all
#                            signed: the comparison proper
#   conformance/blobs-first  a signed image of which the suite is given only
#                            the blobs: the deliberate difference, which
#                            must be a 403 through the proxy
#   conformance/unsigned     an unsigned image: a control, every manifest
#                            and blob read of it must be a 403 through the
#                            proxy, so the comparison cannot pass against a
#                            proxy that verifies nothing
#
# Each run owns its processes and ports (kernel-picked, read back from
# /proc and checked to belong to the PID this script started). Results of
# every run stay in the work directory with KEEP=1 (junit.xml and
# report.html per run).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
root=$(cd "$here/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-$root/bin/portcullis}
E2E_BIN=${E2E_BIN:-/usr/local/e2e/bin}
export PATH="$E2E_BIN:$PATH"

started=$(date +%s)
work=$(mktemp -d /tmp/portcullis-conformance.XXXXXX)
RUN=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
export COSIGN_PASSWORD="" HOME="$work/home" TUF_ROOT="$work/tuf"
mkdir -p "$HOME" "$work/res"
[ -x "$PORTCULLIS" ] || { echo "no portcullis binary at $PORTCULLIS (make build)" >&2; rm -rf "$work"; exit 2; }
command -v oci-conformance >/dev/null || { echo "no oci-conformance in $E2E_BIN (test/e2e/install.sh conformance)" >&2; rm -rf "$work"; exit 2; }
# A private copy: a rebuild of bin/ during the run cannot swap the binary.
cp "$PORTCULLIS" "$work/portcullis" && PORTCULLIS=$work/portcullis
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "work directory kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

phase() { printf '\n[conformance] %s %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\n[conformance] ABORT: %s\n' "$*" >&2; exit 1; }
# must WHAT CMD...: a setup step; its failure ends the run.
must() {
  local what=$1; shift
  local out="$work/must.$BASHPID.out"
  "$@" >"$out" 2>&1 || { show "$out" 10 >&2; die "$what failed"; }
  rm -f "$out"
}

phase "starting registries (run $RUN)"
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
done
echo "  dist $DIST (pid $dist_pid), ola $OLA (pid $ola_pid)"

phase "seeding and signing"
cd "$work"
must "cosign3 generate-key-pair" cosign3 generate-key-pair --output-key-prefix conformance
declare -A D
# image KEY REF PLATFORM: pushes a one-layer image of fresh random bytes to
# REF and records the digest the push reported.
image() {
  local k=$1 ref=$2 out
  head -c 2048 /dev/urandom > "$work/blob.bin"
  tar -C "$work" -cf "$work/layer.tar" blob.bin
  must "crane append $ref" crane append --oci-empty-base -f "$work/layer.tar" -t "$ref"
  out=$(crane mutate --set-platform "$3" "$ref" 2>"$work/must.out") || { show "$work/must.out"; die "crane mutate $ref failed"; }
  D[$k]=${out##*@}
  [[ ${D[$k]} == sha256:* ]] || die "crane mutate $ref printed no digest: $out"
}
# blobs KEY REF: the config and layer digests of KEY's manifest.
blobs() {
  crane manifest "$2@${D[$1]}" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(" ".join([m["config"]["digest"]]+[l["digest"] for l in m["layers"]]))'
}
# sign UPSTREAM REF: a legacy .sig tag (cosign v2) on distribution, a
# sigstore bundle found through the referrers API (cosign v3) on olareg.
sign() {
  if [ "$1" = dist ]; then
    must "cosign2 sign $2" cosign2 sign --key conformance.key --tlog-upload=false -y "$2"
  else
    must "cosign3 sign $2" cosign3 sign --key conformance.key --use-signing-config=false --tlog-upload=false -y "$2"
  fi
}
declare -A TAGS MANIFESTS BLOBS REFERRERS
sign_pids=()
for up in dist ola; do
  [ "$up" = dist ] && reg=$DIST || reg=$OLA
  r1=$reg/conformance/repo1
  image "${up}_a" "$r1:v1" linux/amd64
  image "${up}_b" "$r1:amd64" linux/amd64
  image "${up}_c" "$r1:arm64" linux/arm64
  must "crane index append $r1" crane index append -m "$r1@${D[${up}_b]}" -m "$r1@${D[${up}_c]}" -t "$r1:multi"
  D[${up}_idx]=$(crane digest "$r1:multi") || die "crane digest $r1:multi failed"
  image "${up}_first" "$reg/conformance/blobs-first:v1" linux/amd64
  image "${up}_unsigned" "$reg/conformance/unsigned:v1" linux/amd64
  TAGS[$up.repo1]="v1 amd64 arm64 multi"
  MANIFESTS[$up.repo1]="${D[${up}_a]} ${D[${up}_idx]} ${D[${up}_b]} ${D[${up}_c]}"
  BLOBS[$up.repo1]="$(blobs "${up}_a" "$r1") $(blobs "${up}_b" "$r1") $(blobs "${up}_c" "$r1")"
  REFERRERS[$up.repo1]=${D[${up}_a]}
  TAGS[$up.blobs-first]="" MANIFESTS[$up.blobs-first]="" REFERRERS[$up.blobs-first]=""
  BLOBS[$up.blobs-first]=$(blobs "${up}_first" "$reg/conformance/blobs-first")
  TAGS[$up.unsigned]=v1 MANIFESTS[$up.unsigned]=${D[${up}_unsigned]} REFERRERS[$up.unsigned]=""
  BLOBS[$up.unsigned]=$(blobs "${up}_unsigned" "$reg/conformance/unsigned")
  for k in a idx b c; do sign "$up" "$r1@${D[${up}_$k]}" & sign_pids+=($!); done
  sign "$up" "$reg/conformance/blobs-first@${D[${up}_first]}" & sign_pids+=($!)
done
for p in "${sign_pids[@]}"; do wait "$p" || die "a signing step failed (output above)"; done
for k in dist_a dist_idx dist_b dist_c dist_first dist_unsigned ola_a ola_idx ola_b ola_c ola_first ola_unsigned; do printf '  %-14s %s\n' "$k" "${D[$k]}"; done
# The pushed content is what the registries serve: they are this run's.
[ "$(crane digest "$DIST/conformance/repo1:multi")" = "${D[dist_idx]}" ] && [ "$(crane digest "$OLA/conformance/repo1:multi")" = "${D[ola_idx]}" ] ||
  die "a registry does not serve the index this run pushed"

phase "starting portcullis"
DIST_ALIAS=dist-$RUN.conformance.local OLA_ALIAS=ola-$RUN.conformance.local
cat > "$work/portcullis.yaml" <<YML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  - {name: dist, url: "http://$DIST", aliases: [$DIST_ALIAS], insecure: true}
  - {name: ola, url: "http://$OLA", aliases: [$OLA_ALIAS], insecure: true}
trust:
  - {name: conformance-key, keys: [conformance.pub]}
boundaries:
  - name: conformance
    match: {repositories: ["conformance/**"]}
    signatures:
      authorities: [{name: release, key: conformance-key}]
unmatched: deny
log: {level: info}
YML
must "portcullis config check" "$PORTCULLIS" config check "$work/portcullis.yaml"
"$PORTCULLIS" serve --config "$work/portcullis.yaml" >"$work/portcullis.log" 2>&1 & pc_pid=$!; pids+=($pc_pid)
await_portcullis "$pc_pid" "$work/portcullis.log" || die "portcullis did not start"
echo "  proxy $PROXY, admin $ADMIN (pid $pc_pid)"

# suite REGISTRY REPO DATA OUT FILTER: one run of the suite, read-only
# (no push, no delete) against REPO, results in res/OUT. The seeded data
# DATA (upstream.repository) is given to the read-only branch only: the
# suite fails to write its reports when read-only data was given and its
# branch filtered out.
suite() {
  local reg=$1 repo=$2 data=$3 out=$work/res/$4 filter=$5
  local tags="" manifests="" blobs="" referrers=""
  if [ "$filter" = "OCI Conformance Test/read-only" ]; then
    tags=${TAGS[$data]} manifests=${MANIFESTS[$data]} blobs=${BLOBS[$data]} referrers=${REFERRERS[$data]}
  fi
  mkdir -p "$out"
  env OCI_REGISTRY="$reg" OCI_TLS=disabled OCI_REPO1="$repo" OCI_REPO2="${repo%/*}/repo2" \
    OCI_API_PUSH=false OCI_API_BLOBS_DELETE=false OCI_API_MANIFESTS_DELETE=false OCI_API_TAGS_DELETE=false \
    OCI_RO_DATA_TAGS="$tags" OCI_RO_DATA_MANIFESTS="$manifests" OCI_RO_DATA_BLOBS="$blobs" OCI_RO_DATA_REFERRERS="$referrers" \
    OCI_RESULTS_DIR="$out" OCI_FILTER_TEST="$filter" OCI_LOG=error \
    timeout 120 oci-conformance >"$out/stdout" 2>"$out/stderr"
  [ -s "$out/junit.xml" ] || { show "$out/stderr" 10 >&2; die "the suite wrote no junit.xml for $4"; }
}

phase "running the suite"
# With push disabled, this version of the suite crashes while writing its
# reports (results.yaml) after skipping a blob-push branch, so it is run
# once per top-level branch, each selected with OCI_FILTER_TEST. The
# branches are read from the summary an unfiltered run prints before it
# crashes; the blob-push branches are the disabled ones.
mkdir -p "$work/res/discover"
env OCI_REGISTRY="$OLA" OCI_TLS=disabled OCI_REPO1=conformance/repo1 OCI_API_PUSH=false \
  OCI_API_BLOBS_DELETE=false OCI_API_MANIFESTS_DELETE=false OCI_API_TAGS_DELETE=false \
  OCI_RO_DATA_TAGS=v1 OCI_RESULTS_DIR="$work/res/discover" OCI_LOG=error \
  timeout 120 oci-conformance >"$work/res/discover/stdout" 2>&1
mapfile -t branches < <(sed -n 's/^  \(OCI Conformance Test\/[^:]*\): \(.*\)$/\1|\2/p' "$work/res/discover/stdout" | grep -v '|Disabled$' | cut -d'|' -f1)
[ "${#branches[@]}" -ge 3 ] || { show "$work/res/discover/stdout" 20 >&2; die "found ${#branches[@]} runnable branches of the suite, expected at least 3"; }
echo "  branches: $(printf '%s, ' "${branches[@]#OCI Conformance Test/}" | sed 's/, $//')"
n=0
for up in dist ola; do
  [ "$up" = dist ] && { reg=$DIST alias=$DIST_ALIAS; } || { reg=$OLA alias=$OLA_ALIAS; }
  for b in "${branches[@]}"; do
    slug=${b#OCI Conformance Test/}; slug=${slug//[^a-z0-9]/-}
    suite "$reg" conformance/repo1 "$up.repo1" "$up.repo1.direct.$slug" "$b"
    suite "$PROXY" "$alias/conformance/repo1" "$up.repo1" "$up.repo1.portcullis.$slug" "$b"
    n=$((n+2))
  done
  for data in blobs-first unsigned; do
    suite "$reg" "conformance/$data" "$up.$data" "$up.$data.direct.read-only" "OCI Conformance Test/read-only"
    suite "$PROXY" "$alias/conformance/$data" "$up.$data" "$up.$data.portcullis.read-only" "OCI Conformance Test/read-only"
    n=$((n+2))
  done
done
echo "  $n runs"

phase "comparing"
printf '%s\n' "${D[@]}" ${TAGS[*]} ${BLOBS[*]} > "$work/refs"
python3 - "$work/res" "$work/refs" <<'PY'
import collections, glob, os, re, sys
import xml.etree.ElementTree as ET

res_dir, refs_file = sys.argv[1], sys.argv[2]
refs = set(open(refs_file).read().split())
URL = re.compile(r"^URL: (\S+)$", re.M)
STATUS = re.compile(r"^Status: (\d+)$", re.M)
PREFIX = "OCI Conformance Test/"

# runs[(upstream, data, mode)] = {key: (status, http statuses, errors)}
runs = collections.defaultdict(dict)
for path in sorted(glob.glob(os.path.join(res_dir, "*", "junit.xml"))):
    run = os.path.basename(os.path.dirname(path))
    if run == "discover":
        continue
    up, data, mode, _ = run.split(".", 3)
    seen = collections.Counter()
    for tc in ET.parse(path).getroot().iter("testcase"):
        out = tc.findtext("system-err") or ""
        urls = URL.findall(out)
        # A test's key is its name and the seeded reference it reads, so
        # repeated names (one per tag, manifest or blob) compare one to
        # one; a random reference (a missing tag) is left out.
        ref = urls[0].rstrip("/").rsplit("/", 1)[-1] if urls else ""
        key = tc.get("name").removeprefix(PREFIX) + (" " + ref if ref in refs else "")
        seen[key] += 1
        if seen[key] > 1:
            key += " #%d" % seen[key]
        runs[(up, data, mode)][key] = (tc.get("status"), STATUS.findall(out), (tc.findtext("system-out") or "").strip())

def short(key):
    return re.sub(r"(sha256:[0-9a-f]{12})[0-9a-f]{52}", r"\1…", key)

def counts(r):
    c = collections.Counter(s for s, _, _ in r.values())
    return "%3d passed %3d failed %3d skipped" % (c["passed"], c["failure"] + c["error"], c["skipped"])

problems = []
direct_pass = proxy_pass = deliberate = 0
print("%-5s %-12s %-38s %s" % ("up", "repository", "directly", "through portcullis"))
for up in ("dist", "ola"):
    for data in ("repo1", "blobs-first", "unsigned"):
        d, p = runs.get((up, data, "direct"), {}), runs.get((up, data, "portcullis"), {})
        print("%-5s %-12s %-38s %s" % (up, data, counts(d), counts(p)))

for up in ("dist", "ola"):
    d, p = runs[(up, "repo1", "direct")], runs[(up, "repo1", "portcullis")]
    print("\n%s: conformance/repo1 (signed), test by test" % up)
    skipped = 0
    for key in d:
        ds, ps = d[key][0], p.get(key, ("missing", [], ""))[0]
        verdict = ""
        if ds == ps == "skipped":
            skipped += 1
            continue
        if ds == "passed":
            direct_pass += 1
            if ps == "passed":
                proxy_pass += 1
            else:
                verdict = "REGRESSION"
                problems.append("%s %s: passes directly, %s through portcullis (HTTP %s): %s" % (
                    up, key, ps, ",".join(p.get(key, ("", [], ""))[1]) or "-", p.get(key, ("", [], ""))[2][:300]))
        elif ps == "passed":
            proxy_pass += 1
            verdict = "passes through portcullis only"
        print("  %-62s %-8s %-8s %s" % (short(key), ds, ps, verdict))
    print("  (%d more skipped both ways: writes are disabled)" % skipped)
    for key in p:
        if key not in d:
            problems.append("%s %s: ran through portcullis only" % (up, key))
    # A baseline that passes nothing proves nothing.
    for want in ("ping", "read-only/pull/manifest-by-tag", "read-only/pull/manifest-by-digest",
                 "read-only/pull/blob-get", "read-only/head/manifest-head-by-digest", "read-only/head/blob-head"):
        if not any(k.startswith(want) and v[0] == "passed" for k, v in d.items()):
            problems.append("%s: %s does not pass directly, the comparison has no baseline" % (up, want))

    # The deliberate difference: a blob fetched before any manifest.
    d, p = runs[(up, "blobs-first", "direct")], runs[(up, "blobs-first", "portcullis")]
    print("\n%s: conformance/blobs-first (signed, only its blobs are read: blob gating)" % up)
    blob_tests = [k for k in d if k.startswith(("read-only/pull/blob-get", "read-only/head/blob-head"))]
    if not blob_tests or any(d[k][0] != "passed" for k in blob_tests):
        problems.append("%s blobs-first: the blobs do not all pass directly" % up)
    for key in blob_tests:
        ps, codes, _ = p.get(key, ("missing", [], ""))
        ok = ps != "passed" and codes[:1] == ["403"]
        if ok:
            deliberate += 1
        else:
            problems.append("%s blobs-first %s: blob gating must deny a blob read before any manifest with 403, got %s (HTTP %s)" % (
                up, key, ps, ",".join(codes) or "-"))
        print("  %-62s %-8s %-8s %s" % (short(key), d[key][0], ps, "deliberate (403)" if ok else "NOT DENIED"))

    # The control: nothing of unsigned content is served.
    d, p = runs[(up, "unsigned", "direct")], runs[(up, "unsigned", "portcullis")]
    reads = [k for k in d if k.startswith(("read-only/pull/", "read-only/head/")) and d[k][0] == "passed"]
    denied = [k for k in reads if p.get(k, ("missing", [], ""))[0] != "passed" and p[k][1][:1] == ["403"]]
    print("\n%s: conformance/unsigned (control): %d of %d reads that pass directly are denied (403) through portcullis" % (up, len(denied), len(reads)))
    if len(reads) < 4 or len(denied) != len(reads):
        problems.append("%s unsigned: %d of %d reads denied, expected all (at least 4)" % (up, len(denied), len(reads)))

print()
for pr in problems:
    print("  FAIL  " + pr)
print("conformance: %d passed directly, %d passed through portcullis, %d deliberate differences "
      "(blob read before any manifest, denied by blob gating), %d problems" % (direct_pass, proxy_pass, deliberate, len(problems)))
sys.exit(1 if problems else 0)
PY
rc=$?
echo "conformance finished in $(( $(date +%s) - started ))s"
exit $rc
