#!/usr/bin/env bash
# Build the socp-node image (compose/Dockerfile) on a machine with or without a
# container registry.
#
# 1. Choose the base image, in this order:
#      - $BASE_IMAGE if set (used as given; docker pulls it if it must);
#      - python:3.11-slim-bookworm if present locally;
#      - $SOCP_BASE_IMAGE (default socp-base:bookworm) if present locally (made
#        earlier by the next item) with the current package list in its label
#        org.socp-testbed.packages;
#      - python:3.11-slim-bookworm if it can be pulled;
#      - otherwise build $SOCP_BASE_IMAGE with mmdebstrap (Debian bookworm
#        minbase + $BASE_PACKAGES: python3, python3-venv, ca-certificates, and
#        iproute2, nftables and tcpdump for the testbed's network faults and
#        traffic capture), installing mmdebstrap with apt-get first if needed. Done
#        once, then cached; rebuilt when the package list changes.
#    A public base gets iproute2, nftables and tcpdump from apt in compose/Dockerfile.
# 2. Build wheels of the project and its dependencies on the host with
#    `pip wheel` (needs a CPython 3.11 on the host, to match bookworm's Python).
# 3. docker build with build/image/ (only the wheels) as the context.
#
# Environment: SOCP_IMAGE (default socp-node:latest), BASE_IMAGE, SOCP_BASE_IMAGE
# (the locally built base's tag, default socp-base:bookworm: another tag leaves
# a shared base alone), PYTHON (host CPython 3.11 used for `pip wheel`),
# SOCP_PULL_TIMEOUT (seconds, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

LABEL='org.socp-testbed.project=socp-testbed'
IMAGE=${SOCP_IMAGE:-socp-node:latest}
PUBLIC_BASE=python:3.11-slim-bookworm
LOCAL_BASE=${SOCP_BASE_IMAGE:-socp-base:bookworm}
# What the local base holds besides minbase. iproute2 (tc), nftables (nft) and tcpdump are run by the testbed's
# short-lived helper containers in a node's network namespace (testbed/netem.py), never by the node itself.
BASE_PACKAGES=python3,python3-venv,ca-certificates,iproute2,nftables,tcpdump
PACKAGES_LABEL=org.socp-testbed.packages
CONTEXT=build/image
PULL_TIMEOUT=${SOCP_PULL_TIMEOUT:-60}
DEBIAN_MIRROR=${SOCP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${SOCP_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

build_local_base() {
    local start tarball hooks=()
    start=$(now)
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] || die "mmdebstrap is missing and only root can apt-get install it"
        log "installing mmdebstrap with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q mmdebstrap
    fi
    [ "$(id -u)" -eq 0 ] || die "building $LOCAL_BASE with mmdebstrap needs root"

    # Merge /usr with mmdebstrap's hook instead of the usrmerge package, which
    # would drag the whole of perl (about 50 MB) into the image.
    if [ -d /usr/share/mmdebstrap/hooks/merged-usr ]; then
        hooks=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
    fi
    mkdir -p build
    tarball=$(mktemp "$ROOT/build/socp-base.XXXXXX.tar")
    # shellcheck disable=SC2064
    trap "rm -f '$tarball'" EXIT
    log "building $LOCAL_BASE with mmdebstrap (bookworm minbase + $BASE_PACKAGES)"
    # Written to a file first so that a failed bootstrap never becomes an image.
    mmdebstrap --variant=minbase --quiet \
        --include="$BASE_PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "${hooks[@]}" \
        bookworm "$tarball" \
        "deb $DEBIAN_MIRROR bookworm main" \
        "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb $DEBIAN_SECURITY_MIRROR bookworm-security main"
    docker import \
        -c "LABEL $LABEL" \
        -c 'LABEL org.socp-testbed.base=mmdebstrap-bookworm-minbase' \
        -c "LABEL $PACKAGES_LABEL=$BASE_PACKAGES" \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["/bin/bash"]' \
        "$tarball" "$LOCAL_BASE" >/dev/null
    rm -f "$tarball"
    trap - EXIT
    log "built $LOCAL_BASE in $(elapsed "$start") s"
}

# True when $LOCAL_BASE exists and was built with today's $BASE_PACKAGES (an older one lacks packages).
local_base_current() {
    local packages
    have_image "$LOCAL_BASE" || return 1
    packages=$(docker image inspect --format "{{ index .Config.Labels \"$PACKAGES_LABEL\" }}" "$LOCAL_BASE")
    if [ "$packages" != "$BASE_PACKAGES" ]; then
        log "$LOCAL_BASE holds [${packages:-python3,python3-venv,ca-certificates}], not [$BASE_PACKAGES]: rebuilding it"
        return 1
    fi
}

choose_base() {
    if [ -n "${BASE_IMAGE:-}" ]; then
        echo "$BASE_IMAGE"
    elif have_image "$PUBLIC_BASE"; then
        echo "$PUBLIC_BASE"
    elif local_base_current; then
        echo "$LOCAL_BASE"
    elif log "trying to pull $PUBLIC_BASE" &&
         timeout "$PULL_TIMEOUT" docker pull --quiet "$PUBLIC_BASE" >/dev/null 2>&1; then
        echo "$PUBLIC_BASE"
    else
        log "$PUBLIC_BASE cannot be pulled: using a locally built base"
        build_local_base >&2
        echo "$LOCAL_BASE"
    fi
}

find_python() {
    local py
    for py in "${PYTHON:-}" python3.11 python3; do
        [ -n "$py" ] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$py"
            return
        fi
    done
    die "no CPython 3.11 found on the host (set PYTHON=...): the wheels must match the image's Python 3.11"
}

build_wheels() {
    local py start
    py=$(find_python)
    start=$(now)
    log "building wheels with $py into $CONTEXT/wheels"
    rm -rf "$CONTEXT" build/lib build/bdist.*    # no stale modules in the wheel
    mkdir -p "$CONTEXT/wheels/deps" "$CONTEXT/wheels/project"
    # A fixed SOURCE_DATE_EPOCH makes the project wheel byte-identical when the
    # sources are, so docker's layer cache turns an unchanged rebuild into a no-op.
    SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$py" -m pip wheel --quiet --wheel-dir "$CONTEXT/wheels/deps" "$ROOT"
    mv "$CONTEXT"/wheels/deps/socp_testbed-*.whl "$CONTEXT/wheels/project/"
    log "wheels built in $(elapsed "$start") s: $(cd "$CONTEXT/wheels" && echo */*.whl)"
}

main() {
    command -v docker >/dev/null 2>&1 || die "docker is not installed"
    docker info >/dev/null 2>&1 || die "the docker daemon is not reachable"

    local base start
    base=$(choose_base)
    build_wheels
    start=$(now)
    log "building $IMAGE on $base"
    docker build \
        --file compose/Dockerfile \
        --build-arg "BASE_IMAGE=$base" \
        --label "$LABEL" \
        --tag "$IMAGE" \
        "$CONTEXT"
    log "built $IMAGE in $(elapsed "$start") s ($(docker image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{ printf "%.1f MB", $1 / 1e6 }'))"
}

main "$@"
