#!/usr/bin/env bash
# Build the image with whatever this machine has, export it as an archive and write its SBOM:
#   hack/image/build.sh            (what `make image` runs)
#   hack/image/build.sh --inputs   print the inputs hash only (the image test's staleness check)
#
# Writes, in OUT (default build/image):
#   sluice.tar        docker-archive of IMAGE (`kind load image-archive`, `docker load`)
#   sluice.cdx.json   CycloneDX SBOM of the image's virtualenv (hack/image/sbom.py)
#   sluice.json       how it was built: image, inputs hash, builder, base, secrets passed
#
# Settings (environment or make variables):
#   IMAGE=sluice:dev        name and tag given to the image
#   BUILDER=auto            docker (when its daemon answers), else podman, else buildah
#   PYTHON_IMAGE=...        the base (default: the Dockerfile's pinned python slim image).
#                           With buildah or podman, when it is the default and cannot be
#                           pulled (no registry), hack/image/base.sh makes one with debootstrap.
#   BASE=debootstrap        use hack/image/base.sh's base even where a registry answers
#
# The inputs (Dockerfile, pyproject.toml, README.md, src/, these scripts, IMAGE, PYTHON_IMAGE)
# are hashed; a build of the same hash is kept in ~/.cache/sluice/image/ and reused, so only
# changed inputs rebuild (CI's fresh clones included). buildah builds with --isolation chroot,
# which needs neither a daemon nor setrlimit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

IMAGE=${IMAGE:-sluice:dev}
BUILDER=${BUILDER:-auto}
BASE=${BASE:-auto}
OUT=${OUT:-build/image}
DEFAULT_PYTHON_IMAGE=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
PYTHON_IMAGE=${PYTHON_IMAGE:-$DEFAULT_PYTHON_IMAGE}
CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}/image
PYTHON=${PYTHON:-.venv/bin/python}

log() { echo "image: $*" >&2; }

pick_builder() {
  if [[ $BUILDER != auto ]]; then echo "$BUILDER"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null; then echo podman; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  log "no builder: install docker, podman or buildah (Debian: apt-get install -y buildah)"
  exit 1
}

inputs_hash() {
  {
    printf '%s\n' "IMAGE=$IMAGE" "PYTHON_IMAGE=$PYTHON_IMAGE" "BASE=$BASE"
    find Dockerfile .dockerignore pyproject.toml README.md src hack/image -type f \
      ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

# Docker's rule for short names (python:3.11 is docker.io/library/python:3.11), which buildah
# and podman follow only where registries.conf says so.
qualify() {
  local name=$1 first=${1%%/*}
  if [[ $name != */* ]]; then name=docker.io/library/$name
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then name=docker.io/$name
  fi
  echo "$name"
}

# The base for buildah and podman: the one asked for, if it is here or can be pulled;
# otherwise (only for the default) Debian's Python from hack/image/base.sh.
pick_base() {
  local tool=$1 wanted
  wanted=$(qualify "$PYTHON_IMAGE")
  if [[ $BASE == debootstrap ]]; then hack/image/base.sh; return; fi
  local -a pull=("$tool" pull --quiet)
  [[ $tool == buildah ]] && pull+=(--retry 0)  # no registry is no registry: fall back at once
  if "$tool" inspect --type image "$wanted" >/dev/null 2>&1 \
    || "${pull[@]}" "$wanted" >/dev/null 2>&1; then
    echo "$wanted"
  elif [[ $PYTHON_IMAGE == "$DEFAULT_PYTHON_IMAGE" ]]; then
    log "$PYTHON_IMAGE cannot be pulled here: using the Debian base of hack/image/base.sh"
    hack/image/base.sh
  else
    log "$PYTHON_IMAGE is neither here nor can it be pulled"
    exit 1
  fi
}

# The inputs hash of the image by that name in the tool's local storage, if any.
stored_inputs() {
  local labels=.Config.Labels
  [[ $1 == buildah ]] && labels=.OCIv1.Config.Labels
  "$1" inspect --type image --format "{{index $labels \"dev.sluice.inputs\"}}" "$IMAGE" \
    2>/dev/null || true
}

# How it was built, as JSON: what make image wrote and what the image test checks against.
record() {
  local tool=$1 base=$2 seconds=$3 dir=$4
  printf '{\n  "image": "%s",\n  "inputs": "%s",\n  "builder": "%s",\n  "base": "%s",\n' \
    "$IMAGE" "$hash" "$tool" "$base"
  printf '  "seconds": %d,\n  "secrets": %s\n}\n' "$seconds" "$(cat "$dir/secrets.json")"
}

build() {
  local tool=$1 dir=$2 base=$PYTHON_IMAGE
  local -a args=(--tag "$IMAGE" --label "dev.sluice.inputs=$hash" --file Dockerfile)
  [[ $tool == docker ]] || base=$(pick_base "$tool")
  args+=(--build-arg "PYTHON_IMAGE=$base")
  local secret
  while IFS= read -r secret; do
    args+=(--secret "id=${secret%%=*},src=${secret#*=}")
    log "secret ${secret%%=*} from ${secret#*=} (mounted for pip install only)"
  done < <("$PYTHON" hack/image/hostpip.py "$dir")
  case $tool in
    buildah) buildah bud --isolation chroot "${args[@]}" . ;;
    podman) podman build --isolation "${BUILD_ISOLATION:-chroot}" "${args[@]}" . ;;
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
  esac >&2
  echo "$base"
}

save() {
  local tool=$1 archive=$2
  rm -f "$archive"
  case $tool in
    buildah) buildah push --quiet "$IMAGE" "docker-archive:$archive:$IMAGE" ;;
    podman) podman save --quiet --format docker-archive --output "$archive" "$IMAGE" ;;
    docker) docker save --output "$archive" "$IMAGE" ;;
  esac >&2
}

load() {
  local tool=$1 archive=$2
  case $tool in
    buildah) buildah pull --quiet "docker-archive:$archive" >/dev/null ;;
    podman) podman load --quiet --input "$archive" >/dev/null ;;
    docker) docker load --quiet --input "$archive" >/dev/null ;;
  esac
}

if [[ ${1:-} == --inputs ]]; then inputs_hash; exit 0; fi
tool=$(pick_builder)
hash=$(inputs_hash)
cached=$CACHE/$hash
mkdir -p "$OUT"

if [[ -f $cached/sluice.json ]]; then
  log "$IMAGE is up to date (inputs $hash, $cached)"
  [[ $(stored_inputs "$tool") == "$hash" ]] || { log "loading it into $tool"; load "$tool" "$cached/sluice.tar"; }
else
  started=$SECONDS
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "building $IMAGE with $tool (inputs $hash)"
  base=$(build "$tool" "$work")
  mkdir -p "$work/out"
  save "$tool" "$work/out/sluice.tar"
  "$PYTHON" hack/image/sbom.py "$work/out/sluice.tar" "$work/out/sluice.cdx.json" >&2
  record "$tool" "$base" $((SECONDS - started)) "$work" >"$work/out/sluice.json"
  mkdir -p "$CACHE"
  rm -rf "$cached" && mv "$work/out" "$cached"
  # Keep the cache to the newest few builds, and buildah's or podman's storage free of the
  # images this one replaced (docker keeps its build cache).
  # (The cache's folder names are hex hashes: no spaces to worry about.)
  # shellcheck disable=SC2012
  ls -dt "$CACHE"/*/ | tail -n +4 | xargs -r rm -rf
  case $tool in
    buildah) buildah rmi --prune >/dev/null 2>&1 || true ;;
    podman) podman image prune --force >/dev/null 2>&1 || true ;;
  esac
  log "built in $((SECONDS - started)) s"
fi

for file in sluice.tar sluice.cdx.json sluice.json; do
  ln -f "$cached/$file" "$OUT/$file" 2>/dev/null || cp "$cached/$file" "$OUT/$file"
done
log "$OUT/sluice.tar ($(du -h "$OUT/sluice.tar" | cut -f1)), SBOM $OUT/sluice.cdx.json"
