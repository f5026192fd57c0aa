# Helpers shared by the end-to-end scripts (sourced, not run). Each
# script owns its processes and ports: a server listens on a port the
# kernel picks, and the port counts only when the very PID the script
# started holds the socket, so concurrent runs never answer each other.

# show FILE [N]: the last N (5) lines of FILE, indented.
show() { sed 's/^/        /' "$1" | tail -"${2:-5}"; }
# has GREP-ARGS...: grep that reads all of its input. "grep -q" exits at
# the first match, and under pipefail the writer's SIGPIPE would turn that
# match into a failure.
has() { grep "$@" >/dev/null; }

# listen_ports PID: the TCP ports PID listens on, read from /proc so that
# a port counts only when this very process holds the socket.
listen_ports() {
  local inodes
  inodes=" $(find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n' | tr '\n' ' ') "
  [ "$inodes" != "  " ] || return 0
  awk -v inodes="$inodes" '$4 == "0A" && index(inodes, " " $10 " ") { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    while read -r hex; do printf '%d\n' "0x$hex"; done
}
# await_port PID NAME: the one port PID listens on, once it listens.
await_port() {
  local ports
  for _ in $(seq 200); do
    kill -0 "$1" 2>/dev/null || { echo "$2 exited" >&2; return 1; }
    ports=$(listen_ports "$1")
    if [ -n "$ports" ]; then echo "$ports" | head -1; return 0; fi
    sleep 0.05
  done
  echo "$2 did not listen" >&2; return 1
}
# owns_port PID PORT: PID itself listens on PORT.
owns_port() { listen_ports "$1" | has -x "$2"; }

# wait_http URL: URL answers 2xx within 10 s.
wait_http() {
  for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timeout waiting for $1" >&2; return 1
}

# logged_addr MSG LOG: the listen address portcullis logged with MSG.
logged_addr() { sed -n "s/.*\"msg\":\"$1\".*\"listen\":\"\([^\"]*\)\".*/\1/p" "$2" | head -1; }

# await_portcullis PID LOG: the portcullis serving as PID has logged both
# listen addresses to LOG, holds both ports itself and is ready; sets
# PROXY and ADMIN. Otherwise says why on stderr and fails.
await_portcullis() {
  local pid=$1 log=$2
  PROXY="" ADMIN=""
  for _ in $(seq 200); do
    PROXY=$(logged_addr serving "$log") ADMIN=$(logged_addr admin "$log")
    [ -n "$PROXY" ] && [ -n "$ADMIN" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$PROXY" ] || [ -z "$ADMIN" ]; then
    show "$log" 20 >&2; echo "portcullis did not log its addresses" >&2; return 1
  fi
  owns_port "$pid" "${PROXY##*:}" && owns_port "$pid" "${ADMIN##*:}" ||
    { echo "portcullis PID $pid does not hold $PROXY and $ADMIN" >&2; return 1; }
  wait_http "http://$ADMIN/readyz" || { show "$log" 20 >&2; echo "portcullis not ready" >&2; return 1; }
}

# start_containerd DIR: a containerd of this script's own (root, state and
# socket under DIR, log in DIR.log, no CRI), added to pids; sets CTR to
# the ctr command line for it. Fails when it does not answer.
start_containerd() {
  local dir=$1
  mkdir -p "$dir"
  cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
TOML
  containerd --config "$dir/config.toml" >"$dir.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ -S "$dir/containerd.sock" ] && break; sleep 0.1; done
  CTR=(ctr --address "$dir/containerd.sock")
  "${CTR[@]}" version >/dev/null 2>&1
}
