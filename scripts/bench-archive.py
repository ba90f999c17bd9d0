#!/usr/bin/env python3
"""archive_command benchmark: walvault wal-push against pgBackRest archive-push.

On PostgreSQL 15 with 16 MiB segments: pgbench at --scale writes WAL, and
--segments completed segments are archived the way PostgreSQL's archiver
does it (one command per segment, run as the server's user from the data
directory) by:

1. `walvault wal-push` into an empty local-directory repository (zstd 1 +
   AES-256-GCM): the path of walvault alone;
2. `walvault wal-push` of the same segments again: the path beside the
   stream, where the segment is already stored and is compared;
3. `pgbackrest archive-push` (compress-type=zst, compress-level=1,
   aes-256-cbc, posix repository);
4. `pgbackrest archive-push --archive-async` (process-max 2, spool), with
   every segment marked .ready in pg_wal/archive_status as the server
   would, so the async process pushes ahead in parallel and the later
   commands only confirm.

1 to 3 alternate segment by segment; 4 runs the segments in order after
them. Reported: the mean and median seconds per segment and the total.
Writes target/bench/archive.md and prints it.

Usage: scripts/bench-archive.py [--scale 20] [--segments 30] [--walvault BINARY]
"""
import argparse, os, pwd, shutil, socket, statistics, subprocess, tempfile, time

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


def psql(sock, port, sql):
    return run([f"{PGBIN}/psql", "-h", sock, "-p", str(port), "-U", "postgres", "-qAtX", "-c", sql, "postgres"]).strip()


def pgbackrest_conf(work, name, data, port, sock):
    path = os.path.join(work, f"pgbackrest-{name}.conf")
    for d in (f"br-{name}-lock", f"br-{name}-log", f"br-{name}-spool", f"br-{name}-repo"):
        os.makedirs(os.path.join(work, d)); chown_postgres(os.path.join(work, d))
    with open(path, "w") as f:
        f.write(f"[global]\nrepo1-path={work}/br-{name}-repo\ncompress-type=zst\ncompress-level=1\nprocess-max=2\n"
                f"repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchpass\n"
                f"lock-path={work}/br-{name}-lock\nlog-path={work}/br-{name}-log\nspool-path={work}/br-{name}-spool\n"
                f"log-level-console=error\nlog-level-file=off\n"
                f"[bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={sock}\npg1-user=postgres\n")
    os.chmod(path, 0o644)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--segments", type=int, default=30)
    ap.add_argument("--walvault", help="a walvault binary to use instead of building the release one")
    args = ap.parse_args()
    if not shutil.which("pgbackrest"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbackrest"], check=True, capture_output=True)
    if args.walvault:
        walvault = os.path.abspath(args.walvault)
    else:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        walvault = os.path.join(ROOT, "target/release/walvault")
    work = tempfile.mkdtemp(prefix="walvault-archbench-")
    os.chmod(work, 0o755)
    chown_postgres(work)
    data = os.path.join(work, "data")
    sock = os.path.join(work, "sock")
    os.makedirs(sock); chown_postgres(sock)
    port = free_port()
    run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], **as_postgres())
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port={port}\nlisten_addresses=''\nunix_socket_directories='{sock}'\n"
                "wal_level=replica\nshared_buffers='256MB'\nmax_wal_size='8GB'\nwal_keep_size='8GB'\n"
                # Archived by hand below; the server must keep the segments.
                "archive_mode=off\n")
    server_log = os.path.join(work, "server.log")
    run([f"{PGBIN}/pg_ctl", "-D", data, "-l", server_log, "-w", "start"], **as_postgres())
    sync_conf = pgbackrest_conf(work, "sync", data, port, sock)
    async_conf = pgbackrest_conf(work, "async", data, port, sock)
    repo = os.path.join(work, "wv-repo")
    os.makedirs(repo); chown_postgres(repo)
    settings = os.path.join(work, "walvault.json")
    with open(settings, "w") as f:
        f.write('{"version": 1, "repo": "file://%s", "key": "%s"}\n' % (repo, KEY))
    os.chmod(settings, 0o600); chown_postgres(settings)
    env = dict(os.environ, WALVAULT_LOG_LEVEL="warn", HOME="/tmp")
    try:
        for conf in (sync_conf, async_conf):
            run(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"], **as_postgres())
        first = psql(sock, port, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        run([f"{PGBIN}/pgbench", "-h", sock, "-p", str(port), "-U", "postgres", "-i", "-s", str(args.scale), "-q", "postgres"])
        while True:
            psql(sock, port, "SELECT pg_switch_wal()")
            done = sorted(n for n in os.listdir(os.path.join(data, "pg_wal"))
                          if len(n) == 24 and first <= n < psql(sock, port, "SELECT pg_walfile_name(pg_current_wal_lsn())"))
            if len(done) >= args.segments:
                break
            run([f"{PGBIN}/pgbench", "-h", sock, "-p", str(port), "-U", "postgres", "-N", "-T", "5", "postgres"])
        segments = done[:args.segments]
        mib = 16 * len(segments)

        times = {"wal-push (stores)": [], "wal-push (already stored)": [], "pgbackrest archive-push": [],
                 "pgbackrest archive-push --archive-async": []}
        push = [walvault, "wal-push", "--repo-config", settings]
        for i, seg in enumerate(segments):
            path = f"pg_wal/{seg}"
            steps = [
                ("wal-push (stores)", push + [path], env),
                ("pgbackrest archive-push", ["pgbackrest", f"--config={sync_conf}", "--stanza=bench", "archive-push", path], None),
            ]
            for name, cmd, e in (steps if i % 2 == 0 else steps[::-1]):
                times[name].append(timed(cmd, cwd=data, env=e, **as_postgres()))
            times["wal-push (already stored)"].append(timed(push + [path], cwd=data, env=env, **as_postgres()))
        status = os.path.join(data, "pg_wal/archive_status")
        for seg in segments:
            ready = os.path.join(status, f"{seg}.ready")
            open(ready, "w").close(); chown_postgres(ready)
        for seg in segments:
            times["pgbackrest archive-push --archive-async"].append(timed(
                ["pgbackrest", f"--config={async_conf}", "--stanza=bench", "--archive-async", "archive-push",
                 f"pg_wal/{seg}"], cwd=data, **as_postgres()))
    finally:
        subprocess.run([f"{PGBIN}/pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True, **as_postgres())

    lines = [f"archive_command, {len(segments)} segments of 16 MiB ({mib} MiB) of pgbench WAL (scale {args.scale}), "
             "PostgreSQL 15, local repositories, one command per segment",
             "",
             "| command | mean s/segment | median s/segment | total s | MiB/s |",
             "|---|---|---|---|---|"]
    for name, ts in times.items():
        total = sum(ts)
        lines.append(f"| {name} | {statistics.mean(ts):.3f} | {statistics.median(ts):.3f} | {total:.2f} | {mib / total:.0f} |")
    text = "\n".join(lines)
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target/bench/archive.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
