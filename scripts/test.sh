#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs
# (scripts/setup-test-env.sh), checks formatting, lints, validates
# docker-compose.yml, then runs every unit and integration test against real
# PostgreSQL 14-18 servers and real object stores on loopback (s3s-fs and moto
# for S3, Azurite, fake-gcs-server), in parallel with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-env.sh

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings

# The fuzz targets are a workspace of their own (fuzz/): they must build
# on stable too, so a broken target is seen the day it breaks.
echo "== fuzz targets build"
cargo check --manifest-path fuzz/Cargo.toml --locked

echo "== layout (imports point down, no circle, file sizes)"
python3 scripts/check-layout.py

echo "== docs (every test docs/security.md names exists)"
python3 scripts/check-docs.py

echo "== kubernetes manifest"
python3 scripts/check-kubernetes.py

echo "== alert rules (promtool)"
promtool check rules packaging/prometheus/walvault-alerts.yml
promtool test rules packaging/prometheus/walvault-alerts.test.yml

echo "== docker-compose.yml"
docker-compose -f docker-compose.yml config -q

echo "== tests (unit + integration, PostgreSQL 14-18, object stores on loopback)"
if ! command -v cargo-nextest >/dev/null; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --locked --all-targets --no-fail-fast "$@"

# The benchmark commands on small data, one round: this fails when a command
# they run breaks, never on a timing (the figures live in docs/benchmarks.md).
echo "== benchmark smoke run"
python3 scripts/bench-compare.py --baseline target/debug/walvault \
  --candidate target/debug/walvault --scale 1 --rounds 1 --wal-mib 16
python3 scripts/bench-restore.py --walvault target/debug/walvault --scale 1 --rounds 1 \
  --load-seconds 5
python3 scripts/bench-archive.py --walvault target/debug/walvault --scale 1 --segments 2
