#!/usr/bin/env bash
# Build the CPU image (the Dockerfile's default target) as lstm-serve:<version>.
#
#   deploy/image/build.sh                 # what `make image` runs
#   IMAGE_BUILDER=buildah deploy/image/build.sh
#
# With a Docker engine that answers (`docker info`), this is a plain `docker build`. Without one it builds the
# same Dockerfile with buildah (chroot isolation, no registry: --pull=never) on a local stand-in for
# python:3.11-slim-bookworm: Debian bookworm made with debootstrap, plus python3, python3-venv and
# python-is-python3. That base is made once per machine and kept in buildah's image store
# (localhost/lstm-serve-base:bookworm-py3); it is made again only when missing. The result is
# localhost/lstm-serve:<version>.
#
# Only for the buildah build, and only at build time (bind mounts, never layers):
#   - a copy of the host's CA bundle, at /mnt/ca.crt, for pip to trust (--build-arg PIP_CERT), for networks whose
#     TLS is re-signed by a local authority;
#   - a wheelhouse on this machine, at /mnt/wheelhouse, which pip installs from alone (--build-arg
#     PIP_FIND_LINKS=/mnt/wheelhouse, PIP_NO_INDEX=1), so that a rebuild after a source change downloads nothing
#     (pip's own cache stays off: the Dockerfile installs with --no-cache-dir). See fill_wheelhouse below.
#
# Environment:
#   IMAGE_BUILDER   auto (default), docker or buildah
#   IMAGE_TAG       default lstm-serve:<version of pyproject.toml>
#   IMAGE_CACHE     where the buildah build keeps its wheelhouse (default ${XDG_CACHE_HOME:-~/.cache}/lstm-serve-image)
#   DEBIAN_MIRROR   for debootstrap (default: the bookworm mirror apt already uses, else deb.debian.org)
#   HOST_CA_BUNDLE  default /etc/ssl/certs/ca-certificates.crt (skipped when absent)
# Extra arguments are passed to `docker build` / `buildah bud`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
TAG=${IMAGE_TAG:-lstm-serve:$VERSION}
BUILDER=${IMAGE_BUILDER:-auto}
BASE_IMAGE=localhost/lstm-serve-base:bookworm-py3
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/lstm-serve-image}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

log() { printf 'image: %s\n' "$*" >&2; }

if [ "$BUILDER" = auto ]; then
    if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
        BUILDER=docker
    elif command -v buildah >/dev/null; then
        BUILDER=buildah
    else
        log "no Docker engine answers and buildah is not installed (apt-get install buildah debootstrap)"
        exit 1
    fi
fi

if [ "$BUILDER" = docker ]; then
    log "docker build -t $TAG ."
    exec docker build -t "$TAG" "$@" .
fi
[ "$BUILDER" = buildah ] || { log "IMAGE_BUILDER must be auto, docker or buildah, not $BUILDER"; exit 2; }

# buildah and its storage want root; as another user run through sudo.
buildah() { $SUDO "$(type -P buildah)" "$@"; }

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local uri
    # shellcheck disable=SC2016  # apt's own $(FIELD) syntax, not the shell's
    uri=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null \
        | awk '$1 == "bookworm" { print $2; exit }')
    echo "${uri:-http://deb.debian.org/debian/}"
}

make_base() {
    local rootfs ctr mnt mirror started
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
        || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
    started=$(date +%s)
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/lstm-serve-base.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "$SUDO rm -rf '$rootfs'" EXIT
    log "making $BASE_IMAGE: debootstrap bookworm from $mirror (once per machine)"
    if ! $SUDO env PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="$BASE_PACKAGES" \
        bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        rm -f "$rootfs.log"
        exit 1
    fi
    rm -f "$rootfs.log"
    # What an image base does not carry: device nodes, apt's downloads and lists, docs.
    $SUDO sh -c "cd '$rootfs' && rm -rf dev/* proc/* sys/* run/* tmp/* var/tmp/* var/lib/apt/lists/* \
        var/cache/apt/*.bin var/cache/apt/archives/*.deb usr/share/doc/* usr/share/man/* usr/share/info/*"
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    $SUDO cp -a "$rootfs/." "$mnt/"
    buildah umount "$ctr" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd '["python3"]' --label lstm-serve.base="Debian bookworm + python3, made by debootstrap" "$ctr"
    buildah commit --rm --quiet "$ctr" "$BASE_IMAGE" >/dev/null
    $SUDO rm -rf "$rootfs"
    trap - EXIT
    log "made $BASE_IMAGE in $(($(date +%s) - started)) s"
}

# The wheelhouse: every dependency and build requirement of pyproject.toml, resolved and downloaded by the base
# image's own pip (so the wheels fit its Python) in a throwaway container. It is complete for this pyproject.toml,
# so the build installs from it without an index. Redone when the dependencies or build requirements in
# pyproject.toml or the base change, and daily so that new releases come in; pip then downloads only the files the
# wheelhouse lacks (index queries only when nothing is new).
fill_wheelhouse() {
    local stamp ctr
    stamp=$({
        sed -n -e '/^dependencies = \[/,/^\]/p' -e '/^\[build-system\]/,/^\[project\]/p' pyproject.toml
        buildah images -q --no-trunc "$BASE_IMAGE"
    } | sha256sum)
    if [ "$(cat "$CACHE/wheelhouse.stamp" 2>/dev/null)" = "$stamp" ] \
        && [ -n "$(find "$CACHE/wheelhouse.stamp" -mmin -1440 2>/dev/null)" ]; then
        return
    fi
    log "filling the wheelhouse $CACHE/mnt/wheelhouse"
    ctr=$(buildah from --pull=never --quiet "$BASE_IMAGE")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very container
    trap "$SUDO '$(type -P buildah)' rm '$ctr' >/dev/null" EXIT
    buildah run --isolation chroot -v "$CACHE/mnt:/mnt" -e "PIP_CERT=$pip_cert" \
        -v "$ROOT/pyproject.toml:/src/pyproject.toml:ro" "$ctr" -- sh -ec '
        python -m venv /tmp/venv
        python -c "import tomllib; p = tomllib.load(open(\"/src/pyproject.toml\", \"rb\")); \
print(chr(10).join(p[\"project\"][\"dependencies\"] + p[\"build-system\"][\"requires\"]))" >/tmp/requirements.txt
        /tmp/venv/bin/pip download --quiet --disable-pip-version-check \
            --dest /mnt/wheelhouse --find-links /mnt/wheelhouse -r /tmp/requirements.txt'
    buildah rm "$ctr" >/dev/null
    trap - EXIT
    echo "$stamp" >"$CACHE/wheelhouse.stamp"
}

# Dangling images left by earlier builds on the local base (the layer cache of a source tree that has changed
# since, and the images the tag moved away from): about 0.6 GB a build. The images this build made or reused stay.
prune() {
    local used=$1 id
    for id in $(buildah images -q --no-trunc --filter dangling=true --filter label=lstm-serve.base); do
        id=${id#sha256:}
        grep -q "${id:0:11}" "$used" || buildah rmi "$id" >/dev/null 2>&1 || true
    done
}

# What the build mounts, at /mnt: a directory every base has, empty, so that the mount point leaves no trace in the
# image's layers (a missing one would be created, and kept, in every stage that RUNs something).
mkdir -p "$CACHE/mnt/wheelhouse"
pip_cert=""
if [ -r "$HOST_CA_BUNDLE" ]; then
    cp "$HOST_CA_BUNDLE" "$CACHE/mnt/ca.crt"
    pip_cert=/mnt/ca.crt
fi
# One build at a time on this machine: the base is made once, and prune() sees no other build's images.
exec 9>"$CACHE/lock"
flock 9
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    make_base
fi
fill_wheelhouse

started=$(date +%s)
log "buildah bud -t $TAG (base $BASE_IMAGE)"
output=$(mktemp)
# shellcheck disable=SC2064  # expand now: the trap must remove this very file
trap "rm -f '$output'" EXIT
buildah bud --isolation=chroot --pull=never --layers --force-rm --format docker \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -v "$CACHE/mnt:/mnt:ro" --build-arg "PIP_CERT=$pip_cert" \
    --build-arg PIP_FIND_LINKS=/mnt/wheelhouse --build-arg PIP_NO_INDEX=1 \
    -t "$TAG" "$@" . | tee "$output"
log "built localhost/$TAG in $(($(date +%s) - started)) s"
prune "$output"
