#!/usr/bin/env bash
# Ensure a Docker engine answers on the default socket (/var/run/docker.sock).
#
# Idempotent: does nothing when `docker` can already reach a daemon. Otherwise
# starts `dockerd` in the background (no systemd needed) and waits for it.
# Must run as root. Usable by humans and by .ci/run.
#
# Environment:
#   DOCKLET_DOCKERD_LOG      log file (default /tmp/docklet-ci-dockerd.log)
#   DOCKLET_DOCKERD_TIMEOUT  seconds to wait for the daemon (default 60)
set -euo pipefail

LOG="${DOCKLET_DOCKERD_LOG:-/tmp/docklet-ci-dockerd.log}"
TIMEOUT="${DOCKLET_DOCKERD_TIMEOUT:-60}"

say() { echo "start-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

docker_ok() {
    # `docker version` fails (non-zero) when the server part is unreachable.
    # Probe the default socket explicitly so a stray DOCKER_HOST/context in the
    # caller's environment cannot make us believe some other engine is "ours".
    DOCKER_HOST=unix:///var/run/docker.sock \
        docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# First pid of a running dockerd (no procps dependency: scan /proc).
dockerd_pid() {
    local f
    for f in /proc/[0-9]*/comm; do
        if [ "$(cat "$f" 2>/dev/null)" = dockerd ]; then
            f="${f#/proc/}"; echo "${f%/comm}"; return 0
        fi
    done
    return 1
}

command -v docker >/dev/null 2>&1 || die "docker CLI not found (apt-get install docker.io)"

if docker_ok; then
    say "Docker engine already running (server $(DOCKER_HOST=unix:///var/run/docker.sock docker version --format '{{.Server.Version}}'))"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root to start dockerd"
command -v dockerd >/dev/null 2>&1 || die "dockerd not found (apt-get install docker.io)"

# Only one engine may run. If a dockerd is alive (e.g. still starting up) just
# wait for it instead of launching a second one.
existing=""
if [ -s /var/run/docker.pid ]; then
    p="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dockerd ]; then existing="$p"; fi
fi
if [ -z "$existing" ]; then
    existing="$(dockerd_pid || true)"
fi

if [ -n "$existing" ]; then
    say "dockerd already running (pid $existing) but not answering yet; waiting"
    pid="$existing"
else
    say "starting dockerd (log: $LOG)"
    # setsid + closed stdin + redirected output: fully detached from the caller,
    # so it survives the CI step / the human's shell and does not hold pipes.
    setsid dockerd >>"$LOG" 2>&1 </dev/null &
    pid=$!
fi

for ((i = 0; i < TIMEOUT; i++)); do
    if docker_ok; then
        say "Docker engine ready after ${i}s (server $(DOCKER_HOST=unix:///var/run/docker.sock docker version --format '{{.Server.Version}}'))"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null && ! dockerd_pid >/dev/null; then
        say "dockerd exited; last lines of $LOG:"
        tail -n 40 "$LOG" >&2 || true
        die "dockerd failed to start"
    fi
    sleep 1
done

say "last lines of $LOG:"
tail -n 40 "$LOG" >&2 || true
die "Docker engine did not answer within ${TIMEOUT}s (dockerd pid $pid left running)"
