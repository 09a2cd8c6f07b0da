#!/usr/bin/env bash
# Build the docklet/control-plane and docklet/agent images from this checkout.
#
#   contrib/build-images.sh                 # FROM python:3.11-slim (needs Docker Hub)
#   contrib/build-images.sh --offline-base  # FROM a Debian image made here with debootstrap
#   contrib/build-images.sh --tag dev       # tag docklet/*:dev instead of :VERSION and :latest
#
# Docklet and its dependencies are collected as wheels on this machine first
# (dist/wheels), so the image build itself downloads nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
base="${DOCKLET_BASE_IMAGE:-python:3.11-slim}"
offline_base=docklet/debian-python:bookworm
tags=()
while [ $# -gt 0 ]; do
    case "$1" in
        --offline-base) base="$offline_base" ;;
        --tag) tags+=("$2"); shift ;;
        *) echo "usage: $0 [--offline-base] [--tag TAG]..." >&2; exit 2 ;;
    esac
    shift
done
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ ${#tags[@]} -gt 0 ] || tags=("$version" latest)

if [ "$base" = "$offline_base" ] && ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
    mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    echo "building $base with debootstrap from $mirror ..."
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,git \
        bookworm "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["/bin/bash"]' - "$base" >/dev/null
fi

rm -rf dist/wheels
"$python" -m pip wheel -q --disable-pip-version-check -w dist/wheels . 2>&1 | grep -v '^WARNING: Location' || true
ls dist/wheels/docklet-*.whl >/dev/null

for target in control-plane agent; do
    args=()
    for tag in "${tags[@]}"; do args+=(-t "docklet/$target:$tag"); done
    docker build -q -f contrib/Dockerfile --build-arg "BASE=$base" --target "$target" \
        "${args[@]}" . >/dev/null
    echo "built docklet/$target:${tags[*]}"
done
