#!/usr/bin/env bash
# Builds the Debian 13 (trixie) root that Orthanc runs in on a Debian 12 host: Orthanc
# 1.12 and its plugins need GLIBC 2.38, so they cannot run on the host directly. The
# launcher starts each Orthanc inside this root with bubblewrap (deploy/stack/sandbox.py).
#
#   deploy/platform/orthanc-root.sh CACHE_DIR          builds it if needed, prints its path
#   deploy/platform/orthanc-root.sh --path CACHE_DIR   prints the path it has (built or not)
#
# The root is built once per pinned package list (deploy/versions.env), requirements.lock
# and the script's FORMAT: their hash names the root (CACHE_DIR/orthanc-root-<hash>), so a changed
# list builds a new one beside the old, and a root built for another list is never used.
# It is built in a temporary folder and renamed into place only when complete (the stamp
# .complete is its last file); any failing step stops with one line naming the step and
# its log, and leaves no half-built root and nothing mounted. Every step is bounded: each
# download times out (wget for debootstrap, apt, pip) and each step has a hard limit.
#
# ORTHANC_ROOT_MIRROR in the environment overrides the pinned Debian mirror (it is part of
# the root's key, so a root from another mirror is another root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
mirror_override=${ORTHANC_ROOT_MIRROR:-}
# shellcheck source=../versions.env
. "$top/deploy/versions.env"
ORTHANC_ROOT_MIRROR=${mirror_override:-$ORTHANC_ROOT_MIRROR}
only_path=
if [ "${1:-}" = --path ]; then only_path=1; shift; fi
cache=${1:?usage: orthanc-root.sh [--path] CACHE_DIR}
die() { echo "[orthanc-root] FAILED: $*" >&2; exit 1; }

# Raise FORMAT when a change to the steps below must rebuild existing roots.
FORMAT=1
key=$( { echo "$FORMAT $ORTHANC_ROOT_SUITE $ORTHANC_ROOT_MIRROR $ORTHANC_ROOT_PACKAGES"
         cat "$top/requirements.lock"; } | sha256sum | cut -c1-12)
root="$cache/orthanc-root-$key"
if [ -n "$only_path" ] || [ -f "$root/.complete" ]; then
  echo "$root"
  exit 0
fi
mkdir -p "$cache"
command -v debootstrap >/dev/null || die "debootstrap is not installed (deploy/install.sh installs it)"
work="$cache/orthanc-root-$key.building"
log="$cache/orthanc-root-$key.log"
unmount_under() {  # every mount at or below $1 (deepest first), as a failed step may leave
  awk -v top="$1" '$5 == top || index($5, top "/") == 1 { print $5 }' /proc/self/mountinfo \
    | sort -r | while read -r point; do umount -l "$point" 2>/dev/null || true; done
}
cleanup() {
  unmount_under "$work"
  rm -rf --one-file-system "$work"
  [ -z "${WGETRC:-}" ] || rm -f "$WGETRC"
}
cleanup
: >"$log"
chmod 0600 "$log"
trap cleanup EXIT
# debootstrap downloads with wget: bounded tries and timeouts instead of 20 tries of 900 s.
export WGETRC="$cache/orthanc-root-$key.wgetrc"
printf 'timeout = 30\ntries = 3\nwaitretry = 2\n' >"$WGETRC"
step() {  # step NAME SECONDS COMMAND...: bounded, logged, one line on failure
  local name=$1 limit=$2
  shift 2
  echo "== $name" >>"$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || die "$name (log: $log)"
}
inroot=(chroot "$work" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin
        DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
apt_bounded=(-o Acquire::http::Timeout=30 -o Acquire::Retries=2)

step "debootstrap $ORTHANC_ROOT_SUITE from $ORTHANC_ROOT_MIRROR" 900 \
  debootstrap --variant=minbase "$ORTHANC_ROOT_SUITE" "$work" "$ORTHANC_ROOT_MIRROR"
cat >"$work/etc/apt/sources.list" <<EOF
deb $ORTHANC_ROOT_MIRROR $ORTHANC_ROOT_SUITE main
deb $ORTHANC_ROOT_MIRROR $ORTHANC_ROOT_SUITE-updates main
deb ${ORTHANC_ROOT_MIRROR%/debian}/debian-security $ORTHANC_ROOT_SUITE-security main
EOF
# No package may start its daemon inside the root (the launcher runs Orthanc itself).
printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
chmod 0755 "$work/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$work/etc/resolv.conf"
# This network intercepts TLS: apt (http) does not care, pip (https) needs the host's CAs.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$work/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$work/usr/local/share/ca-certificates/"
fi
step "apt-get update in the root" 300 "${inroot[@]}" apt-get "${apt_bounded[@]}" update -q
# shellcheck disable=SC2086 # the package list is a word list
step "apt-get install $ORTHANC_ROOT_PACKAGES" 900 \
  "${inroot[@]}" apt-get "${apt_bounded[@]}" install -y -q --no-install-recommends $ORTHANC_ROOT_PACKAGES
step "update-ca-certificates in the root" 120 "${inroot[@]}" update-ca-certificates
# The plugins' Python libraries, for the Python that Orthanc's plugin embeds (3.13 here).
step "python3 -m venv in the root" 120 "${inroot[@]}" python3 -m venv /opt/imgcloud-venv
cp "$top/requirements.lock" "$work/tmp/requirements.lock"
step "pip install -r requirements.lock in the root" 900 \
  "${inroot[@]}" /opt/imgcloud-venv/bin/pip install -q --disable-pip-version-check \
  --timeout 30 --retries 2 --cert /etc/ssl/certs/ca-certificates.crt -r /tmp/requirements.lock
"${inroot[@]}" apt-get clean >>"$log" 2>&1 || true
# What the root holds, for the launcher and the tests to compare with /system.
"${inroot[@]}" dpkg-query -W -f='${Package}=${Version}\n' $ORTHANC_ROOT_PACKAGES >"$work/.versions" \
  2>>"$log" || die "dpkg-query in the root (log: $log)"
unmount_under "$work"
touch "$work/.complete"
trap - EXIT
mv "$work" "$root" || { cleanup; die "renaming $work to $root (log: $log)"; }
rm -f "$WGETRC"
echo "$root"
