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
