#!/usr/bin/env bash
# The main job on embedded defaults, on a fresh machine:
#   1. start a throwaway local PostgreSQL 15,
#   2. run `walvault stream` into a local-directory repository (encrypted),
#   3. take a base backup (`walvault backup`) while it streams,
#   4. write rows with timestamps while it streams,
#   5. verify the backup, show what is archived (`walvault list`), check the
#      setup (`walvault check`) and the restorable window (`walvault info`),
#   6. restore to a time between the rows (`walvault restore --start`) and
#      show that exactly the rows committed up to that time came back.
# Everything lives in a temporary directory that is removed at the end
# (set KEEP=1 to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/postgres" ]; then
  echo "demo: installing PostgreSQL 15" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq postgresql-15 >/dev/null; fi
fi

echo "demo: building walvault" >&2
cargo build --locked --quiet
WALVAULT=$PWD/target/debug/walvault

WORK=$(mktemp -d /tmp/walvault-demo.XXXXXX)
chmod 755 "$WORK"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
STREAM_PID=
RESTORED=
cleanup() {
  [ -n "$STREAM_PID" ] && kill "$STREAM_PID" 2>/dev/null || true
  [ -n "$RESTORED" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/restore/data" -m fast stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else echo "demo: kept $WORK" >&2; fi
}
trap cleanup EXIT

mkdir -p "$WORK/sock" "$WORK/pglog"
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$WORK/sock" "$WORK/pglog"
  install -d -o postgres "$WORK/data"
fi
echo "demo: initdb + start PostgreSQL 15 on port $PORT" >&2
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-sync >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
wal_level = replica
max_wal_senders = 5
CONF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pglog/server.log" -w start >/dev/null

PSQL=("$PGBIN/psql" -h "$WORK/sock" -p "$PORT" -U postgres -d postgres -qAtX)

"$WALVAULT" keygen >"$WORK/key" 2>/dev/null
chmod 600 "$WORK/key"
REPO="file://$WORK/repo"
echo "demo: walvault stream --repo $REPO --key-file $WORK/key" >&2
"$WALVAULT" stream --pg "host=$WORK/sock port=$PORT user=postgres" --repo "$REPO" \
  --key-file "$WORK/key" --flush-interval 1s 2>"$WORK/stream.log" &
STREAM_PID=$!

"${PSQL[@]}" -c "CREATE TABLE ledger (id serial PRIMARY KEY, note text, committed_at timestamptz DEFAULT clock_timestamp())"
echo "demo: walvault backup" >&2
"$WALVAULT" backup --pg "host=$WORK/sock port=$PORT user=postgres" --repo "$REPO" --key-file "$WORK/key" \
  --checkpoint fast 2>>"$WORK/backup.log"

for i in $(seq 1 10); do
  "${PSQL[@]}" -c "INSERT INTO ledger (note) SELECT 'batch $i' FROM generate_series(1, 1000) g"
  if [ "$i" -eq 5 ]; then
    sleep 0.5
    TARGET=$("${PSQL[@]}" -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    echo "demo: restore target time $TARGET (after batch 5, before batch 6)" >&2
  fi
  sleep 0.5
done
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
LAST=$("${PSQL[@]}" -c "SELECT pg_current_wal_flush_lsn()")
echo "demo: wrote 10000 ledger rows; server WAL is at $LAST" >&2
sleep 2

echo
echo "== walvault verify"
"$WALVAULT" verify --repo "$REPO" --key-file "$WORK/key"

echo
echo "== walvault list (while streaming)"
"$WALVAULT" list --repo "$REPO" --key-file "$WORK/key"

echo
echo "== walvault check (exit 0 ok, 1 warning, 2 critical)"
"$WALVAULT" check --pg "host=$WORK/sock port=$PORT user=postgres" --repo "$REPO" --key-file "$WORK/key"

echo
echo "== walvault info"
"$WALVAULT" info --pg "host=$WORK/sock port=$PORT user=postgres" --repo "$REPO" --key-file "$WORK/key"

echo
echo "== stopping walvault with SIGTERM (stores the tail, exits 0)"
kill -TERM "$STREAM_PID"
wait "$STREAM_PID" && echo "walvault exited 0"
STREAM_PID=
grep -E "segment archived|tail stored|stopped" "$WORK/stream.log" | tail -n 5

echo
echo "== walvault list --json"
"$WALVAULT" list --repo "$REPO" --key-file "$WORK/key" --json

echo
echo "== stopping the original server; restoring to $TARGET with --start"
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
mkdir -p "$WORK/restore"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK/restore"
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg env WALVAULT_KEY="$(cat "$WORK/key")" "$WALVAULT" restore --repo "$REPO" \
  --pgdata "$WORK/restore/data" --target-time "$TARGET" \
  --start --pg-bin "$PGBIN" --port "$RPORT" --socket-dir "$WORK/restore" 2>>"$WORK/restore.log"
RESTORED=1
RPSQL=("$PGBIN/psql" -h "$WORK/restore" -p "$RPORT" -U postgres -d postgres -qAtX)
echo
echo "== rows in the restored cluster, by batch (batches 1-5 were committed before the target)"
"${RPSQL[@]}" -c "SELECT note, count(*) FROM ledger GROUP BY note ORDER BY min(id)"
BATCHES=$("${RPSQL[@]}" -c "SELECT count(DISTINCT note) FROM ledger")
ROWS=$("${RPSQL[@]}" -c "SELECT count(*) FROM ledger")
if [ "$BATCHES" = 5 ] && [ "$ROWS" = 5000 ]; then
  echo "demo: OK: exactly the 5000 rows committed up to $TARGET came back"
else
  echo "demo: FAILED: expected 5 batches / 5000 rows, got $BATCHES / $ROWS" >&2
  exit 1
fi
