#!/usr/bin/env bash
# Builds the container image localhost/amqp-bridge:test with podman from a
# binary built outside (the Dockerfile's `runtime-prebuilt` target), for the
# container test (tests/container.rs) and for trying the image by hand:
#
#   scripts/container-image.sh [BINARY]      # default: target/release/amqp-bridge
#
# BINARY must run on Debian bookworm's glibc (2.36); a `cargo build` on
# bookworm does. Safe to run again and again; a repeat run takes seconds:
#   - installs podman, runc, slirp4netns and debootstrap when missing (apt-get, like
#     scripts/install-test-deps.sh);
#   - writes a containers.conf that works without systemd (cgroupfs, runc, no
#     default ulimits) to /etc/amqp-bridge-podman/containers.conf (root) or
#     ~/.config/amqp-bridge-podman/containers.conf;
#   - creates the base image docker.io/library/debian:<DEBIAN_TAG of the
#     Dockerfile> only when podman does not have it: a `debootstrap --variant=
#     minbase` of the same suite from the machine's own Debian mirror, imported
#     under that tag, so nothing is pulled from a registry (it stands in for
#     the official image; `podman image inspect` shows its history message);
#   - builds in a context of its own under /tmp holding only the Dockerfile,
#     LICENSE and a copy of BINARY at target/release/amqp-bridge (the path the
#     Dockerfile's default BINARY names), so a release binary in the work tree
#     is never touched; podman's layer cache keeps the apt-get layer.
#
# Progress goes to stderr. stdout is for callers, shell assignments to eval:
#   CONTAINERS_CONF=/etc/amqp-bridge-podman/containers.conf
#   IMAGE=localhost/amqp-bridge:test
# Every podman command must run with that CONTAINERS_CONF in its environment,
# and `podman run` with --pull=never. Networks that work here: --network host
# (the build uses it) and slirp4netns:allow_host_loopback=true (the host's
# 127.0.0.1 is 10.0.2.2 inside; tests/container.rs uses it, so the image's
# HEALTHCHECK finds 127.0.0.1:9464 in the container's own namespace).
# Without systemd, podman logs "unable to get systemd connection to add
# healthchecks" and schedules none: run them with `podman healthcheck run NAME`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=localhost/amqp-bridge:test
log() { echo "container-image: $*" >&2; }

binary=${1:-$repo/target/release/amqp-bridge}
if [ ! -x "$binary" ]; then
  log "no executable binary at $binary (cargo build --release, or pass the path of one)"
  exit 2
fi
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- podman, runc, debootstrap ------------------------------------------------
need_apt=()
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
# podman's user-mode network helper: only "recommended" by Debian's podman,
# so --no-install-recommends leaves it out, and `podman run --network
# slirp4netns:…` (tests/container.rs) fails with "could not find slirp4netns".
command -v slirp4netns >/dev/null 2>&1 || need_apt+=(slirp4netns)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- containers.conf ------------------------------------------------------------
# No systemd here (and no journald): cgroups managed by podman itself, events
# to a file. runc, because crun is not what Debian's podman pulls in
# everywhere. No default ulimits: the container inherits the caller's.
if [ "$(id -u)" -eq 0 ]; then
  conf_dir=/etc/amqp-bridge-podman
else
  conf_dir=${XDG_CONFIG_HOME:-$HOME/.config}/amqp-bridge-podman
fi
conf=$conf_dir/containers.conf
conf_text='# Written by amqp-bridge scripts/container-image.sh: podman without systemd.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
'
mkdir -p "$conf_dir"
if [ "$(cat "$conf" 2>/dev/null)" != "$(printf '%s' "$conf_text")" ]; then
  printf '%s' "$conf_text" >"$conf.tmp.$$"
  mv "$conf.tmp.$$" "$conf"
fi
export CONTAINERS_CONF=$conf

# One build at a time (tests may run this script side by side).
exec 9>"$conf_dir/build.lock"
flock 9

# --- base image ------------------------------------------------------------------
debian_tag=$(sed -n 's/^ARG DEBIAN_TAG=//p' "$repo/Dockerfile" | head -n1)
[ -n "$debian_tag" ] || { log "no ARG DEBIAN_TAG in $repo/Dockerfile"; exit 1; }
base=docker.io/library/debian:$debian_tag
suite=${debian_tag%%-*} # bookworm-20251229-slim -> bookworm

# The Debian mirror the machine's apt uses for $suite (deb822 or one-line form).
debian_mirror() {
  local uri=""
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    uri=$(awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris !~ /security/) { split(uris, u, " "); print u[1]; found = 1; exit }
        types = ""; suites = ""; uris = ""
      }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "uris:" { $1 = ""; uris = $0 }
      END { if (!found) flush() }' "$f")
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -e 's/#.*//' -e 's/\[[^]]*\]//' \
      | awk -v suite="$suite" '$1 == "deb" && $3 == suite && $2 !~ /security/ { print $2; exit }')
  fi
  shopt -u nullglob
  echo "${uri:-http://deb.debian.org/debian}"
}

if podman image exists "$base"; then
  log "base image $base present"
else
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || { log "debootstrap missing"; exit 1; }
  mirror=$(debian_mirror)
  log "creating base image $base: debootstrap --variant=minbase $suite from $mirror (once, a few minutes)"
  rootfs=$(mktemp -d /tmp/amqp-bridge-rootfs.XXXXXX)
  trap '$SUDO rm -rf "$rootfs"' EXIT
  $SUDO debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2
    log "debootstrap failed (log: $rootfs.log)"
    exit 1
  }
  rm -f "$rootfs.log"
  # What the official slim image leaves out anyway: downloaded packages and lists.
  $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  $SUDO tar -C "$rootfs" -c . | podman import --quiet \
    --message "debootstrap --variant=minbase $suite $mirror (local stand-in for $base)" \
    --change 'CMD ["bash"]' - "$base" >/dev/null
  $SUDO rm -rf "$rootfs"
  trap - EXIT
  log "base image $base created"
fi

# --- the image -------------------------------------------------------------------------
context=/tmp/amqp-bridge-image-context
rm -rf "$context"
mkdir -p "$context/target/release"
cp "$repo/Dockerfile" "$repo/LICENSE" "$context/"
cp "$binary" "$context/target/release/amqp-bridge"
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)

old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
log "building $image from $binary"
# --format docker: the OCI image format has no HEALTHCHECK (podman would drop it).
podman build \
  --format docker \
  --pull=never \
  --network host \
  --layers \
  --target runtime-prebuilt \
  --build-arg "GIT_COMMIT=$commit" \
  --tag "$image" \
  --file "$context/Dockerfile" \
  "$context" >"$context.log" 2>&1 || {
  cat "$context.log" >&2
  log "podman build failed"
  exit 1
}
rm -rf "$context" "$context.log"
new_id=$(podman image inspect --format '{{.Id}}' "$image")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  # The previous build of this tag, now untagged (kept when a container uses it).
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi

# The binary runs in the image (glibc, architecture).
if ! version=$(podman run --rm --pull=never --network none --health-cmd none "$image" --version 2>"$context.log"); then
  cat "$context.log" >&2
  log "$image does not run $binary (built against a newer glibc than bookworm's 2.36?)"
  exit 1
fi
rm -f "$context.log"
log "$image ready: $version"

echo "CONTAINERS_CONF=$conf"
echo "IMAGE=$image"
