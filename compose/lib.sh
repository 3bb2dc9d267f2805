# Shared helpers for the no-Docker scripts. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${HUB_TOOLS_DIR:-$HOME/.cache/iot-hub}"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $*"; fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* with your OS's package manager"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local host=$1 port=$2 what=$3 i
  for i in $(seq 1 100); do port_open "$host" "$port" && return 0; sleep 0.2; done
  die "$what did not open $host:$port"
}

wait_http() {
  local url=$1 i
  for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# Deletes JetStream streams by name ($JS.API.STREAM.DELETE). Debian ships no NATS command-line
# client, so this speaks the NATS text protocol from python3; a missing stream is not an error.
nats_delete_streams() {
  python3 - "${NATS_URL:-nats://127.0.0.1:4222}" "$@" <<'PY'
import json, socket, sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=10)
f = sock.makefile("rb")
f.readline()  # INFO
sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.hubreset 1\r\n')
for name in sys.argv[2:]:
    sock.sendall(f"PUB $JS.API.STREAM.DELETE.{name} _INBOX.hubreset 0\r\n\r\n".encode())
    while True:
        line = f.readline()
        if not line:
            sys.exit(f"NATS closed the connection while deleting {name}")
        if line.startswith(b"PING"):
            sock.sendall(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            sys.exit(f"NATS refused: {line.decode().strip()}")
        elif line.startswith(b"MSG"):
            reply = json.loads(f.read(int(line.split()[-1]) + 2))
            if reply.get("success"):
                print(f"deleted stream {name}")
            elif reply.get("error", {}).get("err_code") != 10059:  # 10059: stream not found
                sys.exit(f"cannot delete stream {name}: {reply['error']}")
            break
PY
}
