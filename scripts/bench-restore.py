#!/usr/bin/env python3
"""Restore benchmark: walvault vs pgBackRest, and WAL replay with and without prefetch.

On PostgreSQL 15, one pgbench database at --scale (default 100), with the
walvault sidecar streaming from the start (as in production):

1. Restore. Both tools back the same cluster up (walvault: zstd 1 +
   AES-256-GCM into a local-directory repository; pgBackRest: zst +
   aes-256-cbc into a posix repository, process-max 2). Then, --rounds times,
   alternating, each tool restores into an empty directory (as the postgres
   user, which runs the server) and the server is started on it until it is
   promoted. Both recover to the backup's consistency point (walvault
   --target-immediate, pgBackRest --type=immediate). Reported: the restore
   command's wall time, and the time from starting the server to promotion
   (replaying the backup's WAL through each tool's restore_command). The
   tables are vacuumed before the backups, so autovacuum does not run
   beside the rounds, and the restored directories are removed only after
   the last round: on ext4 without a journal, creating files within a
   minute or more of deleting many costs a scan of the deleted inodes per
   file (`recently_deleted` in the kernel's inode allocator), which would
   fall on whichever restore came next.
2. Replay. After the backups, pgbench -N runs for --load-seconds while the
   sidecar streams. A walvault restore to the end of the archive is started
   and timed until promotion, with the default prefetch (8 segments) and
   with --prefetch 0 (restore_command fetches each segment when asked),
   and the floor: the same restore with every segment of the archive put
   in pg_wal beforehand (untimed) and `restore_command = 'false'`, so
   PostgreSQL reads every segment from pg_wal and only redoes; alternating, --rounds times each. The time recovery spent
   in restore_command, as the end of recovery logs it, is listed too.
   The source server is stopped (its shutdown checkpoint written) and the
   page cache synced before the replay rounds, so its background work does
   not fall on the first ones.

Writes target/bench/restore.md and prints it.

--dataset entropy replaces pgbench's tables by one of realistic entropy
(words, addresses, short random tokens and numbers; zstd about 3x) of the
same size. --load-seconds 0 skips the replay part. The restore table also
gives each tool's peak RSS (the largest of its processes).

Usage: scripts/bench-restore.py [--scale 100] [--rounds 3] [--load-seconds 60] [--dataset pgbench|entropy]
                               [--walvault BINARY]
"""
import argparse, json, os, pwd, resource, shutil, socket, statistics, subprocess, sys, tempfile, time

PGBIN = "/usr/lib/postgresql/15/bin"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "5a" * 32


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def as_postgres():
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")

    def demote():
        os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
    return {"preexec_fn": demote}


def chown_postgres(path):
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", path], check=True)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout


def timed(cmd, **kw):
    t0 = time.monotonic()
    run(cmd, **kw)
    return time.monotonic() - t0


def child_maxrss_mib(cmd, **kw):
    """Runs cmd in a fresh Python child so RUSAGE_CHILDREN is its own; returns (seconds, peak MiB)."""
    code = ("import resource, subprocess, sys, time, json, os\n"
            "t0 = time.monotonic(); p = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True)\n"
            "t = time.monotonic() - t0\n"
            "sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:]) if p.returncode else None\n"
            "print(json.dumps([p.returncode, t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    import json
    # The system interpreter: the child runs as the postgres user, which may
    # not reach a per-user Python.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    p = subprocess.run([python, "-c", code, json.dumps(cmd)], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr[-2000:]}")
    rc, t, rss = json.loads(p.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return t, rss


def psql(sock, port, sql):
    return run([f"{PGBIN}/psql", "-h", sock, "-p", str(port), "-U", "postgres", "-qAtX", "-c", sql, "postgres"]).strip()


def start_until_promoted(data, sock, log):
    """Starts PostgreSQL on a restored directory; returns seconds until it is promoted."""
    port = free_port()
    t0 = time.monotonic()
    run([f"{PGBIN}/pg_ctl", "-D", data, "-l", log, "-o", f"-p {port} -k {sock} -c listen_addresses='' -c archive_mode=off", "start"], **as_postgres())
    try:
        while True:
            r = subprocess.run([f"{PGBIN}/psql", "-h", sock, "-p", str(port), "-U", "postgres", "-qAtX", "-c",
                                "SELECT pg_is_in_recovery()", "postgres"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == "f":
                return time.monotonic() - t0
            if time.monotonic() - t0 > 3600:
                raise RuntimeError(f"no promotion within an hour; see {log}")
            if subprocess.run([f"{PGBIN}/pg_ctl", "-D", data, "status"], capture_output=True, **as_postgres()).returncode == 3 \
                    and time.monotonic() - t0 > 10:
                raise RuntimeError(f"server stopped during recovery:\n{open(log).read()[-3000:]}")
            time.sleep(0.05)
    finally:
        subprocess.run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **as_postgres())


def finish(lines):
    text = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target/bench/restore.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load-seconds", type=int, default=60)
    ap.add_argument("--dataset", choices=["pgbench", "entropy"], default="pgbench")
    ap.add_argument("--walvault", help="a walvault binary to use instead of building the release one")
    args = ap.parse_args()
    if not shutil.which("pgbackrest"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbackrest"], check=True, capture_output=True)
    if args.walvault:
        walvault = os.path.abspath(args.walvault)
    else:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        walvault = os.path.join(ROOT, "target/release/walvault")
    work = tempfile.mkdtemp(prefix="walvault-rsbench-")
    os.chmod(work, 0o755)
    chown_postgres(work)
    data = os.path.join(work, "src")
    sock = os.path.join(work, "sock")
    os.makedirs(sock); chown_postgres(sock)
    port = free_port()
    run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], **as_postgres())
    brconf = os.path.join(work, "pgbackrest.conf")
    brrepo = os.path.join(work, "br-repo")
    for d in ("br-lock", "br-log", "br-spool", "br-repo"):
        os.makedirs(os.path.join(work, d)); chown_postgres(os.path.join(work, d))
    with open(brconf, "w") as f:
        f.write(f"[global]\nrepo1-path={brrepo}\nrepo1-retention-full=100\ncompress-type=zst\nprocess-max=2\nstart-fast=y\n"
                f"repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchpass\n"
                f"lock-path={work}/br-lock\nlog-path={work}/br-log\nspool-path={work}/br-spool\n"
                f"log-level-console=error\nlog-level-file=off\n"
                f"[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={sock}\npg1-user=postgres\n")
    os.chmod(brconf, 0o644)
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port={port}\nlisten_addresses=''\nunix_socket_directories='{sock}'\n"
                "wal_level=replica\nmax_wal_senders=10\nmax_replication_slots=10\nshared_buffers='256MB'\n"
                "max_wal_size='4GB'\narchive_mode=on\n"
                f"archive_command='pgbackrest --config={brconf} --stanza=bench archive-push %p'\n")
    server_log = os.path.join(work, "src.log")
    run([f"{PGBIN}/pg_ctl", "-D", data, "-l", server_log, "-w", "start"], **as_postgres())
    wrepo = os.path.join(work, "wv-repo")
    env = dict(os.environ, WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn")
    stream = None
    lines = []
    try:
        run(["pgbackrest", f"--config={brconf}", "--stanza=bench", "stanza-create"], **as_postgres())
        conn = f"host={sock} port={port} user=postgres"
        stream_log = open(os.path.join(work, "stream.log"), "w")
        stream = subprocess.Popen([walvault, "stream", "--pg", conn, "--repo", f"file://{wrepo}"],
                                  env=env, stdout=stream_log, stderr=stream_log)
        run([f"{PGBIN}/pgbench", "-h", sock, "-p", str(port), "-U", "postgres", "-i", "-s", str(args.scale), "-q", "postgres"])
        if args.dataset == "entropy":
            # pgbench's tables (blank filler, ~20x with zstd) give way to one
            # of realistic entropy of about the same size (~3x).
            rows = int(psql(sock, port, "SELECT pg_total_relation_size('pgbench_accounts')")) // 200
            psql(sock, port, "DROP TABLE pgbench_accounts")
            psql(sock, port, "CREATE TABLE events AS SELECT g AS id, substr(md5(random()::text), 1, 12) AS token, "
                 "'user-' || (random()*50000)::int || '@example.com' AS email, "
                 "(ARRAY['login','logout','purchase','refund','view','search','update','delete'])[1 + (random()*7)::int] "
                 "|| ' from ' || (ARRAY['web','ios','android','api','batch'])[1 + (random()*4)::int] "
                 "|| ' in ' || (ARRAY['eu-west','us-east','ap-south','sa-east'])[1 + (random()*3)::int] AS note, "
                 "(random() * 1e6)::bigint AS amount, (random() * 100)::int AS qty, "
                 f"now() - random() * interval '1000 days' AS at FROM generate_series(1, {rows}) g")
            psql(sock, port, "CREATE INDEX ON events (id)")
        psql(sock, port, "VACUUM ANALYZE")
        psql(sock, port, "CHECKPOINT")
        size = int(psql(sock, port, "SELECT sum(pg_database_size(oid)) FROM pg_database"))
        run([walvault, "backup", "--pg", conn, "--repo", f"file://{wrepo}", "--checkpoint", "fast"], env=env)
        run(["pgbackrest", f"--config={brconf}", "--stanza=bench", "--type=full", "backup"], **as_postgres())

        def restore_walvault(target, prefetch=None, immediate=False):
            extra = [] if prefetch is None else ["--prefetch", str(prefetch)]
            extra += ["--target-immediate"] if immediate else []
            renv = dict(env, HOME="/tmp")
            return child_maxrss_mib([walvault, "restore", "--pgdata", target, "--repo", f"file://{wrepo}"] + extra,
                                    env=renv, **as_postgres())

        def restore_pgbackrest(target):
            os.makedirs(target, mode=0o700); chown_postgres(target)
            return child_maxrss_mib(["pgbackrest", f"--config={brconf}", "--stanza=bench", f"--pg1-path={target}",
                                     "--type=immediate", "--target-action=promote", "restore"], **as_postgres())

        restore_t = {"walvault": [], "pgbackrest": []}
        ready_t = {"walvault": [], "pgbackrest": []}
        rss = {"walvault": [], "pgbackrest": []}
        for r in range(args.rounds):
            for tool in (("walvault", "pgbackrest") if r % 2 == 0 else ("pgbackrest", "walvault")):
                target = os.path.join(work, f"restore-{tool}-{r}")
                t, peak = restore_walvault(target, immediate=True) if tool == "walvault" else restore_pgbackrest(target)
                restore_t[tool].append(t)
                rss[tool].append(peak)
                ready_t[tool].append(start_until_promoted(target, sock, os.path.join(work, f"restore-{tool}-{r}.log")))
        for r in range(args.rounds):
            for tool in ("walvault", "pgbackrest"):
                shutil.rmtree(os.path.join(work, f"restore-{tool}-{r}"))

        med = statistics.median
        lines += [f"PostgreSQL 15, {args.dataset} data from pgbench scale {args.scale} ({size / 2**20:.0f} MiB), local disk, "
                  f"{args.rounds} rounds, median.", "",
                  "| tool | restore s | runs (s) | MiB/s | peak RSS MiB | start to promoted s | runs (s) | total s | ratio (total vs walvault) |",
                  "|---|---:|---|---:|---:|---:|---|---:|---:|"]
        wv_total = med(restore_t["walvault"]) + med(ready_t["walvault"])
        for tool in restore_t:
            rt, st = med(restore_t[tool]), med(ready_t[tool])
            lines.append(f"| {tool} | {rt:.2f} | {', '.join(f'{t:.2f}' for t in restore_t[tool])} | {size / 2**20 / rt:.0f} | "
                         f"{max(rss[tool]):.0f} | {st:.1f} | {', '.join(f'{t:.1f}' for t in ready_t[tool])} | {rt + st:.2f} | "
                         f"{(rt + st) / wv_total:.2f} |")
        if args.load_seconds <= 0:
            return finish(lines)

        # Replay: WAL after the backup, streamed by the sidecar.
        lsn0 = psql(sock, port, "SELECT pg_current_wal_lsn()")
        run([f"{PGBIN}/pgbench", "-h", sock, "-p", str(port), "-U", "postgres", "-N", "-c", "4", "-j", "2",
             "-T", str(args.load_seconds), "postgres"])
        lsn1 = psql(sock, port, "SELECT pg_switch_wal()")
        wal_bytes = int(psql(sock, port, f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')"))
        time.sleep(3)
        stream.terminate(); stream.wait(timeout=120); stream = None
        # The source's checkpoint, autovacuum and the load's dirty pages
        # would otherwise fall on the first rounds.
        run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], **as_postgres())
        run(["sync"])
        listing = json.loads(run([walvault, "list", "--json", "--repo", f"file://{wrepo}"], env=env))
        tl = listing["wal"]["timelines"][-1]
        seg_size = listing["wal"]["wal_segment_size"]
        per_id = 2**32 // seg_size
        # A segment's number from its name: log id, then the segment in it.
        first, last = (int(tl[k][8:16], 16) * per_id + int(tl[k][16:], 16) for k in ("first_segment", "last_segment"))

        def floor_setup(target):
            """The replay floor: the same archive recovery and promotion,
            with every segment already in pg_wal and a restore_command that
            fails at once (`false`), so PostgreSQL reads each segment from
            pg_wal and only redoes."""
            for n in range(first, last + 1):
                name = f"{tl['first_segment'][:8]}{n // per_id:08X}{n % per_id:08X}"
                run([walvault, "wal-fetch", "--repo", f"file://{wrepo}", name, os.path.join(target, "pg_wal", name)],
                    env=env, **as_postgres())
            auto = os.path.join(target, "postgresql.auto.conf")
            kept = [l for l in open(auto) if not l.startswith(("restore_command", "recovery_end_command"))]
            with open(auto, "w") as f:
                f.writelines(kept + ["restore_command = 'false'\n"])

        replay_t = {"prefetch 8 (default)": [], "prefetch 0": [], "floor: segments in pg_wal": []}
        waited = []
        for r in range(args.rounds):
            order = [("prefetch 8 (default)", None), ("prefetch 0", 0), ("floor: segments in pg_wal", "floor")]
            if r % 2:
                order.reverse()
            for label, prefetch in order:
                target = os.path.join(work, f"replay-{r}-{prefetch}")
                restore_walvault(target, 0 if prefetch == "floor" else prefetch)
                if prefetch == "floor":
                    floor_setup(target)
                log = os.path.join(work, f"replay-{r}-{prefetch}.log")
                replay_t[label].append(start_until_promoted(target, sock, log))
                if prefetch is None:
                    waited += [l.split("walvault wal-fetch: ", 1)[1].strip() for l in open(log) if "recovery ran restore_command" in l]
                shutil.rmtree(target)

        lines += ["", f"Replay of {wal_bytes / 2**20:.0f} MiB of WAL (pgbench -N -c 4 for {args.load_seconds} s after the backup), "
                  "from starting the server to promotion:", "",
                  "| restore_command | median s | runs (s) | WAL MiB/s | ratio vs floor |", "|---|---:|---|---:|---:|"]
        base = med(replay_t["floor: segments in pg_wal"])
        for label, ts in replay_t.items():
            lines.append(f"| {'walvault wal-fetch, ' if 'floor' not in label else ''}{label} | {med(ts):.2f} | "
                         f"{', '.join(f'{t:.2f}' for t in ts)} | {wal_bytes / 2**20 / med(ts):.0f} | {med(ts) / base:.3f} |")
        lines += ["", "PostgreSQL's log at the end of each default-prefetch recovery:", ""] + [f"- {w}" for w in waited]
        return finish(lines)
    finally:
        if stream is not None:
            stream.kill()
        subprocess.run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, **as_postgres())
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
