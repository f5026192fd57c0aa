#!/usr/bin/env bash
# Self-check of the end-to-end suite: a suite that passes against a broken
# proxy proves nothing. run.sh is run against a proxy that denies everything
# (its only trusted key signs nothing) and one that allows everything (no
# boundary, unmatched: insecure-allow, no blob gating); each run must exit
# non-zero having failed at least half of its checks. The checks that still
# passed are listed, so a weak check shows up by name.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
for policy in deny-all allow-all; do
  log=$(mktemp /tmp/portcullis-e2e-selfcheck.XXXXXX)
  printf '[selfcheck] %s running the suite against the %s proxy\n' "$(date +%H:%M:%S)" "$policy"
  E2E_POLICY=$policy "$here/run.sh" >"$log" 2>&1; rc=$?
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  if [ -z "$line" ]; then
    echo "[selfcheck] $policy: the suite ended without a result (exit $rc); log $log"
    tail -20 "$log"; status=1; continue
  fi
  read -r p _ f _ <<< "${line//,/}"
  total=$((p + f))
  if [ "$rc" -ne 0 ] && [ $((2 * f)) -ge "$total" ]; then
    echo "[selfcheck] $policy: ok, the suite failed $f of $total checks (exit $rc)"
  else
    echo "[selfcheck] $policy: FAIL, the suite failed only $f of $total checks (exit $rc); log $log"
    status=1
  fi
  sed -n 's/^  ok    /    still passed: /p' "$log"
  [ "$status" -ne 0 ] || rm -f "$log"
done
exit "$status"
