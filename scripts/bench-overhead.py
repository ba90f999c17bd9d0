#!/usr/bin/env python3
"""Fixed costs: what each command costs on a small database, where process
start, opening the repository and listing are most of the time.

On PostgreSQL 15 (pgbench scale 1, about 23 MiB), one standalone
`walvault backup` into each store (a local directory, and s3s-fs on
loopback), then, --rounds times each, the wall time of:

  - `walvault --version`          process start
  - `walvault list --json`        repository open, backups, WAL listing
  - `walvault info --json`        the same, with pins, marks and drills
  - `walvault restore --dry-run`  the restore plan
  - `walvault wal-fetch SEG DEST` one segment of the backup, cold (no spool)
  - `walvault restore`            the whole small restore, files synced
  - start to promoted             PostgreSQL on the restored directory until
                                  it is promoted (restore_command = wal-fetch)

and, as the reference for the last one, PostgreSQL's own start: a
`pg_basebackup -X stream` copy of the same server started until it
accepts queries (crash recovery from the same backup label, no archive).

Nothing is deleted before the end (file creation right after many
deletions is slow on ext4). Prints a Markdown table of medians (and the
spread). Run as root
(PostgreSQL runs as the `postgres` user).

Usage: scripts/bench-overhead.py [--rounds 10] [--walvault target/release/walvault]
"""
import argparse, importlib.util, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bench_restore", os.path.join(ROOT, "scripts", "bench-restore.py"))
br = importlib.util.module_from_spec(spec)
spec.loader.exec_module(br)
PGBIN = br.PGBIN
KEY = "5a" * 32


def wall(cmd, env, **kw):
    # Dirty pages left by the previous step would be written by this
    # command's fsync (ext4 commits them with its journal).
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    br.run(cmd, env=env, **kw)
    return time.monotonic() - t0


def until_accepting(data, sock, log):
    """Starts PostgreSQL on `data`; seconds until it answers a query."""
    port = br.free_port()
    t0 = time.monotonic()
    br.run([f"{PGBIN}/pg_ctl", "-D", data, "-l", log, "-o",
            f"-p {port} -k {sock} -c listen_addresses='' -c archive_mode=off", "start"], **br.as_postgres())
    try:
        while True:
            r = subprocess.run([f"{PGBIN}/psql", "-h", sock, "-p", str(port), "-U", "postgres", "-qAtX", "-c",
                                "SELECT pg_is_in_recovery()", "postgres"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == "f":
                return time.monotonic() - t0
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"not up within 2 minutes; see {log}")
            time.sleep(0.02)
    finally:
        subprocess.run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True,
                       **br.as_postgres())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--walvault", default=os.path.join(ROOT, "target/release/walvault"))
    args = ap.parse_args()
    if args.walvault.endswith("target/release/walvault"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    wv = args.walvault
    work = tempfile.mkdtemp(prefix="walvault-overhead-")
    os.chmod(work, 0o755)
    procs, lines = [], []
    try:
        # The server.
        sock = os.path.join(work, "sock")
        os.makedirs(sock)
        data = os.path.join(work, "src")
        br.chown_postgres(work)
        br.run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], **br.as_postgres())
        port = br.free_port()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port={port}\nlisten_addresses=''\nunix_socket_directories='{sock}'\n"
                    "wal_level=replica\nmax_wal_senders=10\n")
        log = open(os.path.join(work, "src.log"), "w")
        procs.append(subprocess.Popen([f"{PGBIN}/postgres", "-D", data], stdout=log, stderr=log,
                                      **br.as_postgres()))
        for _ in range(200):
            if subprocess.run([f"{PGBIN}/pg_isready", "-h", sock, "-p", str(port)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        br.run([f"{PGBIN}/pgbench", "-h", sock, "-p", str(port), "-U", "postgres", "-i", "-s", "1", "-q", "postgres"])
        conn = f"host={sock} port={port} user=postgres"

        # The stores.
        s3root = os.path.join(work, "s3")
        os.makedirs(os.path.join(s3root, "walvault"))
        s3port = br.free_port()
        s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
        procs.append(subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(s3port),
                                       "--access-key", "bench", "--secret-key", "benchsecret", s3root],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = dict(os.environ, WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn", HOME=work)
        stores = {
            "local directory": dict(base, WALVAULT_REPO=f"file://{work}/repo"),
            "s3s-fs": dict(base, WALVAULT_REPO="s3://walvault/bench", AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3port}",
                           AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="benchsecret",
                           AWS_REGION="us-east-1"),
        }
        for _ in range(100):
            try:
                import socket
                socket.create_connection(("127.0.0.1", s3port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        # PostgreSQL's own start, from a copy with the same kind of backup label.
        # Nothing is deleted until the end: creating files soon after many
        # were deleted is slow on ext4 (it skips recently freed inodes), and
        # would be measured instead of the commands.
        pristine = os.path.join(work, "copy")
        br.run([f"{PGBIN}/pg_basebackup", "-h", sock, "-p", str(port), "-U", "postgres", "-D", pristine,
                "-X", "stream", "-c", "fast"], **br.as_postgres())
        own = []
        for i in range(args.rounds):
            copy = os.path.join(work, f"copy{i}")
            shutil.copytree(pristine, copy, symlinks=True)
            br.chown_postgres(copy)
            subprocess.run(["sync"], check=True)
            own.append(until_accepting(copy, sock, os.path.join(work, f"copy{i}.log")))

        results = {}
        for store, env in stores.items():
            out = json.loads(br.run([wv, "backup", "--pg", conn, "--checkpoint", "fast", "--json"], env=env))
            if os.path.isdir(os.path.join(work, "repo")):
                br.chown_postgres(os.path.join(work, "repo"))
            listing = json.loads(br.run([wv, "list", "--json"], env=env))
            first = listing["backups"][0]["wal_first_segment"]
            r = results.setdefault(store, {})
            for i in range(args.rounds):
                dest = os.path.join(work, f"{store[:5]}-r{i}")
                r.setdefault("`walvault --version`", []).append(wall([wv, "--version"], env))
                r.setdefault("`list --json`", []).append(wall([wv, "list", "--json"], env))
                r.setdefault("`info --json`", []).append(wall([wv, "info", "--json"], env))
                r.setdefault("`restore --dry-run`", []).append(
                    wall([wv, "restore", "--pgdata", dest, "--dry-run"], env))
                r.setdefault("`wal-fetch` one segment", []).append(
                    wall([wv, "wal-fetch", first, dest + ".segment"], env))
                r.setdefault("`restore` (files synced)", []).append(
                    wall([wv, "restore", "--pgdata", dest], env, **br.as_postgres()))
                subprocess.run(["sync"], check=True)
                r.setdefault("start to promoted", []).append(
                    br.start_until_promoted(dest, sock, dest + ".log"))
            r["size"] = out.get("size_bytes") or listing["backups"][0]["size_bytes"]

        def cell(v):
            return f"{statistics.median(v) * 1000:.0f} ({min(v) * 1000:.0f}–{max(v) * 1000:.0f})"
        names = list(stores)
        lines.append(f"PostgreSQL 15, pgbench scale 1 ({results[names[0]]['size'] / 2**20:.0f} MiB), "
                     f"{args.rounds} rounds, milliseconds: median (min–max).")
        lines.append("")
        lines.append("| command | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for key in [k for k in results[names[0]] if k != "size"]:
            lines.append(f"| {key} | " + " | ".join(cell(results[n][key]) for n in names) + " |")
        lines.append(f"| PostgreSQL's own start (a `pg_basebackup -X stream` copy, until it answers) | "
                     + " | ".join(cell(own) for _ in names) + " |")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
