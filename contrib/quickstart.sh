#!/usr/bin/env bash
# Set up Docklet from this checkout and run a control plane and an agent on the
# local Docker engine, in the background.
#
#   contrib/quickstart.sh          install into .venv, start CP (:8080) + agent
#   contrib/quickstart.sh stop     stop both
#   contrib/quickstart.sh status   show what runs
#
# Settings (environment): DOCKLET_PORT (8080), DOCKLET_HOST (127.0.0.1: the
# API has no authentication yet, so it listens on this machine only unless you
# say otherwise), DOCKLET_DATA_DIR (~/.local/share/docklet), DOCKLET_NODE_NAME
# (the Docker host's name).
# Logs and pid files: ~/.local/state/docklet/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
port="${DOCKLET_PORT:-8080}"
host="${DOCKLET_HOST:-127.0.0.1}"
state="${XDG_STATE_HOME:-$HOME/.local/state}/docklet"
data="${DOCKLET_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/docklet}"
mkdir -p "$state" "$data"

stop() {
    for name in agent cp; do
        if [ -f "$state/$name.pid" ] && kill "$(cat "$state/$name.pid")" 2>/dev/null; then
            echo "stopped docklet-$name"
        fi
        rm -f "$state/$name.pid"
    done
}

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

case "${1:-start}" in
    stop) stop; exit 0 ;;
    status)
        for name in cp agent; do
            if running "$name"; then echo "docklet-$name: running (pid $(cat "$state/$name.pid"))"
            else echo "docklet-$name: stopped"; fi
        done
        exit 0 ;;
    start) ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

if ! docker info >/dev/null 2>&1; then
    echo "Docker does not answer. Start it first (e.g. 'sudo systemctl start docker')." >&2
    exit 1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "installing Docklet (and its test tools) into .venv ..."
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if ! running cp; then
    nohup .venv/bin/docklet-cp --data-dir "$data" --host "$host" --port "$port" \
        >>"$state/cp.log" 2>&1 &
    echo $! >"$state/cp.pid"
fi
url="http://localhost:$port"
for _ in $(seq 100); do
    .venv/bin/python - "$url" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/api/health", timeout=1)
except OSError:
    sys.exit(1)
PY
    sleep 0.2
done

if ! running agent; then
    DOCKLET_CP="$url" nohup .venv/bin/docklet-agent >>"$state/agent.log" 2>&1 &
    echo $! >"$state/agent.pid"
fi
for _ in $(seq 100); do
    .venv/bin/docklet --cp "$url" nodes | grep -q online && break
    sleep 0.2
done

.venv/bin/docklet --cp "$url" version
.venv/bin/docklet --cp "$url" nodes
cat <<MSG

Docklet is running: control plane $url, data in $data, logs in $state.
Try:  export PATH="\$PWD/.venv/bin:\$PATH" DOCKLET_CP=$url
      docklet run nginx -p 8000:80 && docklet ps
Stop: contrib/quickstart.sh stop
MSG
