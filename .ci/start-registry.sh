#!/usr/bin/env bash
# Ensure a real Docker registry (distribution v2) answers on http://127.0.0.1:5000/v2/.
#
# Idempotent: does nothing when one already answers. Otherwise starts Debian's
# `docker-registry` binary (package docker-registry, github.com/docker/distribution)
# in the background with a throw-away config (no auth, filesystem storage under
# /tmp) and waits for it. No systemd needed. Usable by humans and by .ci/run.
#
# Environment:
#   DOCKLET_REGISTRY_DIR      storage root   (default /tmp/docklet-ci-registry)
#   DOCKLET_REGISTRY_CONFIG   config written (default /tmp/docklet-ci-registry.yml)
#   DOCKLET_REGISTRY_LOG      log file       (default /tmp/docklet-ci-registry.log)
#   DOCKLET_REGISTRY_TIMEOUT  seconds to wait (default 30)
set -euo pipefail

ADDR="127.0.0.1:5000"
URL="http://${ADDR}/v2/"
DATA_DIR="${DOCKLET_REGISTRY_DIR:-/tmp/docklet-ci-registry}"
CONFIG="${DOCKLET_REGISTRY_CONFIG:-/tmp/docklet-ci-registry.yml}"
LOG="${DOCKLET_REGISTRY_LOG:-/tmp/docklet-ci-registry.log}"
PIDFILE="/tmp/docklet-ci-registry.pid"
TIMEOUT="${DOCKLET_REGISTRY_TIMEOUT:-30}"

say() { echo "start-registry: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Exit status: 0 = a v2 registry answers, 1 = nothing listening,
# 2 = something answers but it is not a Docker registry.
probe() {
    python3 - "$URL" <<'PY'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        hdr = r.headers.get("Docker-Distribution-API-Version", "")
except urllib.error.HTTPError:  # e.g. 401 from a registry requiring auth
    sys.exit(2)
except OSError:
    sys.exit(1)
sys.exit(0 if hdr.startswith("registry/2") else 2)
PY
}

rc=0; probe || rc=$?
case "$rc" in
    0) say "registry already answering on $URL"; exit 0 ;;
    2) die "something on $ADDR answers but is not an unauthenticated Docker registry v2" ;;
esac

command -v docker-registry >/dev/null 2>&1 \
    || die "docker-registry not found (apt-get install docker-registry)"

# A registry we started earlier may still be starting up: wait, don't double-start.
pid=""
if [ -s "$PIDFILE" ]; then
    p="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = docker-registry ]; then pid="$p"; fi
fi

start_registry() {
    mkdir -p "$DATA_DIR"
    cat >"$CONFIG" <<YAML
# Written by .ci/start-registry.sh - local, unauthenticated test registry.
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
  fields:
    service: docklet-ci-registry
storage:
  filesystem:
    rootdirectory: ${DATA_DIR}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: ${ADDR}
  headers:
    X-Content-Type-Options: [nosniff]
YAML
    # REGISTRY_* variables override config keys in distribution; drop any stray ones.
    local unset_args=() v
    while IFS= read -r v; do unset_args+=(-u "$v"); done < <(compgen -e | grep '^REGISTRY_' || true)
    say "starting docker-registry serve $CONFIG (storage: $DATA_DIR, log: $LOG)"
    setsid env "${unset_args[@]}" docker-registry serve "$CONFIG" >>"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
}

started_here=0
if [ -n "$pid" ]; then
    say "docker-registry already running (pid $pid) but not answering yet; waiting"
else
    start_registry
    started_here=1
fi

for ((i = 0; i < TIMEOUT * 4; i++)); do
    rc=0; probe || rc=$?
    if [ "$rc" = 0 ]; then
        say "registry ready on $URL (pid $pid)"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        if [ "$started_here" = 0 ]; then
            # The one we were waiting for went away (e.g. it was shutting down).
            start_registry
            started_here=1
            continue
        fi
        say "docker-registry exited; last lines of $LOG:"
        tail -n 30 "$LOG" >&2 || true
        die "docker-registry failed to start"
    fi
    sleep 0.25
done

say "last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
die "registry did not answer on $URL within ${TIMEOUT}s"
