#!/usr/bin/env bash
# A Debian bookworm base image for machines that can reach Debian's archive but no container
# registry: Python 3.11 from Debian (`python` on PATH, venv and ensurepip for the build stage),
# CA certificates, security updates applied. The Dockerfile uses it in place of the pinned
# python slim image; hack/image/build.sh calls this script when that image cannot be pulled.
#
#   hack/image/base.sh     prints the image's name, loaded into buildah's storage
#
# The root filesystem is made once with debootstrap (about a minute) and kept as a tarball in
# ~/.cache/sluice/base/, named after a hash of this script, so a changed recipe makes a new one.
# Importing that tarball into buildah's storage takes seconds; nothing is done when the image
# there already came from the same tarball. MIRROR=... picks another Debian mirror.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}/base
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
tarball=$CACHE/$SUITE-python3.11-$recipe.tar
image=localhost/sluice-base:$SUITE-python3.11

log() { echo "base: $*" >&2; }

# Run a noisy step with its output in a log, shown only when it fails.
quietly() {
  if ! "$@" >>"$work/base.log" 2>&1; then
    tail -n 40 "$work/base.log" >&2
    log "failed: $*"
    exit 1
  fi
}

make_rootfs() {
  local root=$1
  log "debootstrap $SUITE from $MIRROR into $root (about a minute)"
  quietly debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR"
  cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  log "applying $SUITE-updates and $SUITE-security"
  quietly chroot "$root" apt-get update -qq
  quietly env DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -qq upgrade
  quietly chroot "$root" apt-get clean
  # What python slim images also leave out: documentation, manuals, translations, apt lists.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/etc/resolv.conf "$root"/etc/hostname
  : >"$root/etc/machine-id"
}

if [[ ! -f $tarball ]]; then
  command -v debootstrap >/dev/null || { log "debootstrap is needed (apt-get install debootstrap)"; exit 1; }
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  make_rootfs "$work/root"
  # No device nodes: every runtime mounts its own /dev.
  tar --numeric-owner --xattrs --exclude='./dev/*' -C "$work/root" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tarball"
  rm -rf "$work"
  trap - EXIT
  find "$CACHE" -maxdepth 1 -name "$SUITE-python3.11-*.tar" ! -name "${tarball##*/}" -delete
  log "cached $tarball ($(du -h "$tarball" | cut -f1))"
fi

if [[ $(buildah inspect --type image --format '{{index .ImageAnnotations "dev.sluice.base.recipe"}}' "$image" 2>/dev/null) != "$recipe" ]]; then
  log "importing $tarball as $image"
  container=$(buildah from --quiet scratch)
  trap 'buildah rm "$container" >/dev/null' EXIT
  buildah add --quiet "$container" "$tarball" / >/dev/null
  # The same environment the python slim images set, so the Dockerfile works on either.
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --annotation dev.sluice.base.recipe="$recipe" \
    --label org.opencontainers.image.description="Debian $SUITE with Python 3.11 (hack/image/base.sh)" \
    "$container"
  buildah commit --quiet --rm "$container" "$image" >/dev/null
  trap - EXIT
fi
echo "$image"
