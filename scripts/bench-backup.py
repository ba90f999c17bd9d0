#!/usr/bin/env python3
"""Base-backup benchmark: walvault vs pg_basebackup vs pgBackRest, same run.

On PostgreSQL 15 (pg_basebackup 15 refuses servers of 16+), three datasets:
  - pgbench at --scale (blank filler: compresses ~20x),
  - a table of realistic entropy (hex digests, words, numbers, timestamps:
    zstd compresses it only about 3-4x) of about the same size,
  - the mix: pgbench at --scale with the entropy table beside it.
Each tool backs up each dataset --rounds times, alternating:
  - walvault backup (zstd level 1 + AES-256-GCM, local-directory repository),
  - the same with the server compressing (--server-zstd 1), to choose the default,
  - pg_basebackup -Ft --compress=client-zstd (no encryption) into a directory,
  - pgbackrest backup --type=full (compress-type=zst, aes-256-cbc, posix repo),
  - and the ceiling: the walsender's uncompressed tar stream read by
    pg_basebackup into /dev/null (-D - -Ft -X fetch), what the server can
    send at all. (-X fetch, not none: without WAL, pg_basebackup asks the
    server to wait for the archiver at the backup's end, a 1 s poll with
    archive_mode on; the tools measured all ask it not to.)
All use a fast checkpoint. Reports the median wall time, throughput
(database bytes / second), stored size, the ratio to walvault, and
walvault's peak RSS per dataset. Also measures walvault's peak RSS at two
pgbench sizes (--scale and --scale/5) to show it does not grow with size.
Writes target/bench/backup.md and prints it.

Usage: scripts/bench-backup.py [--scale 50] [--rounds 3]
"""
import argparse, os, pwd, shutil, socket, statistics, subprocess, sys, tempfile, time

PGBIN = "/usr/lib/postgresql/15/bin"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "5a" * 32


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def demote_kwargs():
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    def demote():
        os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
    return {"preexec_fn": demote}


class Cluster:
    def __init__(self, work, name):
        self.dir = os.path.join(work, name)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        os.makedirs(self.sock)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres"); shutil.chown(self.sock, "postgres")
        self.port = free_port()
        subprocess.run([f"{PGBIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, **demote_kwargs())
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"port={self.port}\nlisten_addresses='127.0.0.1'\nunix_socket_directories='{self.sock}'\n"
                    "wal_level=replica\nmax_wal_senders=10\nmax_replication_slots=10\nshared_buffers='256MB'\n"
                    "max_wal_size='4GB'\narchive_mode=on\narchive_command='/bin/true'\n")
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([f"{PGBIN}/postgres", "-D", self.data], stdout=self.log, stderr=self.log, **demote_kwargs())
        for _ in range(200):
            if subprocess.run([f"{PGBIN}/pg_isready", "-h", self.sock, "-p", str(self.port)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)

    def psql(self, sql):
        return subprocess.run([f"{PGBIN}/psql", "-h", self.sock, "-p", str(self.port), "-U", "postgres", "-qAtX", "-c", sql, "postgres"],
                              check=True, capture_output=True, text=True).stdout.strip()

    def size(self):
        return int(self.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))

    def stop(self):
        self.proc.terminate(); self.proc.wait(timeout=120)


def timed(cmd, **kw):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return time.monotonic() - t0, out


def run_with_rss(cmd, env=None):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read(); err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return time.monotonic() - t0, out, usage.ru_maxrss / 1024


def dir_size(path):
    total = 0
    for dp, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dp, f))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("pgbackrest"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbackrest"], check=True, capture_output=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    walvault = os.path.join(ROOT, "target/release/walvault")
    work = tempfile.mkdtemp(prefix="walvault-bkbench-")
    os.chmod(work, 0o755)
    clusters = {}
    try:
        pgb = Cluster(work, "pgbench")
        clusters["pgbench"] = pgb
        subprocess.run([f"{PGBIN}/pgbench", "-h", pgb.sock, "-p", str(pgb.port), "-U", "postgres", "-i", "-s", str(args.scale), "-q", "postgres"],
                       check=True, capture_output=True)
        target = pgb.size()
        ent = Cluster(work, "entropy")
        clusters["entropy"] = ent
        mix = Cluster(work, "mix")
        clusters["mix"] = mix
        subprocess.run([f"{PGBIN}/pgbench", "-h", mix.sock, "-p", str(mix.port), "-U", "postgres", "-i", "-s", str(args.scale), "-q", "postgres"],
                       check=True, capture_output=True)
        rows = max(100000, int(target / 200))
        # Mostly low-entropy text (words from small vocabularies, repeated
        # prefixes) with one short random token and random numbers: about
        # 3-4x with zstd, like typical application data.
        for c in (ent, mix):
            c.psql("CREATE TABLE events AS SELECT g AS id, substr(md5(random()::text), 1, 12) AS token, "
                     "'user-' || (random()*50000)::int || '@example.com' AS email, "
                     "(ARRAY['login','logout','purchase','refund','view','search','update','delete'])[1 + (random()*7)::int] "
                     "|| ' from ' || (ARRAY['web','ios','android','api','batch'])[1 + (random()*4)::int] "
                     "|| ' in ' || (ARRAY['eu-west','us-east','ap-south','sa-east'])[1 + (random()*3)::int] AS note, "
                     "(random() * 1e6)::bigint AS amount, (random() * 100)::int AS qty, "
                     f"now() - random() * interval '1000 days' AS at FROM generate_series(1, {rows}) g")
        for c in clusters.values():
            c.psql("CHECKPOINT")

        results = {}
        rss = {}
        for name, c in clusters.items():
            size = c.size()
            wrepo = os.path.join(work, f"wv-{name}")
            brconf = os.path.join(work, f"pgbackrest-{name}.conf")
            brrepo = os.path.join(work, f"br-{name}")
            for d in ("lock", "log", "spool"):
                os.makedirs(os.path.join(work, f"br-{name}-{d}"), exist_ok=True)
            with open(brconf, "w") as f:
                f.write(f"[global]\nrepo1-path={brrepo}\nrepo1-retention-full=100\ncompress-type=zst\nprocess-max=2\nstart-fast=y\n"
                        f"archive-check=n\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchpass\n"
                        f"lock-path={work}/br-{name}-lock\nlog-path={work}/br-{name}-log\nspool-path={work}/br-{name}-spool\n"
                        f"log-level-console=error\nlog-level-file=off\n"
                        f"[bench]\npg1-path={c.data}\npg1-port={c.port}\npg1-socket-path={c.sock}\npg1-user=postgres\n")
            subprocess.run(["pgbackrest", f"--config={brconf}", "--stanza=bench", "stanza-create"], check=True, capture_output=True)
            env = dict(os.environ, WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn")
            times = {"walvault": [], "walvault --server-zstd 1": [], "pg_basebackup": [], "pgbackrest": [],
                     "ceiling: walsender, uncompressed, to /dev/null": []}
            stored = {}
            for r in range(args.rounds):
                t, out, peak = run_with_rss([walvault, "backup", "--pg", f"host={c.sock} port={c.port} user=postgres",
                                             "--repo", f"file://{wrepo}", "--checkpoint", "fast", "--json"], env=env)
                times["walvault"].append(t); stored["walvault"] = dir_size(wrepo) // (r + 1)
                rss[name] = max(rss.get(name, 0), peak)
                zrepo = os.path.join(work, f"wvz-{name}")
                t, out, _ = run_with_rss([walvault, "backup", "--pg", f"host={c.sock} port={c.port} user=postgres",
                                          "--repo", f"file://{zrepo}", "--checkpoint", "fast", "--server-zstd", "1"], env=env)
                times["walvault --server-zstd 1"].append(t); stored["walvault --server-zstd 1"] = dir_size(zrepo) // (r + 1)
                bdir = os.path.join(work, f"pgbb-{name}-{r}")
                t, _ = timed([f"{PGBIN}/pg_basebackup", "-h", c.sock, "-p", str(c.port), "-U", "postgres", "-D", bdir, "-Ft",
                              "--compress=client-zstd", "-c", "fast", "-X", "stream"])
                times["pg_basebackup"].append(t); stored["pg_basebackup"] = dir_size(bdir)
                shutil.rmtree(bdir)
                t, _ = timed(["pgbackrest", f"--config={brconf}", "--stanza=bench", "--type=full", "backup"])
                times["pgbackrest"].append(t); stored["pgbackrest"] = dir_size(brrepo) // (r + 1)
                t0 = time.monotonic()
                with open(os.devnull, "wb") as null:
                    subprocess.run([f"{PGBIN}/pg_basebackup", "-h", c.sock, "-p", str(c.port), "-U", "postgres", "-D", "-", "-Ft",
                                    "-c", "fast", "-X", "fetch"], stdout=null, stderr=subprocess.DEVNULL, check=True)
                times["ceiling: walsender, uncompressed, to /dev/null"].append(time.monotonic() - t0)
                stored["ceiling: walsender, uncompressed, to /dev/null"] = 0
            results[name] = (size, times, stored)

        # Peak RSS at a smaller size of the same kind.
        small = Cluster(work, "small")
        subprocess.run([f"{PGBIN}/pgbench", "-h", small.sock, "-p", str(small.port), "-U", "postgres", "-i", "-s", str(max(1, args.scale // 5)), "-q", "postgres"],
                       check=True, capture_output=True)
        small.psql("CHECKPOINT")
        env = dict(os.environ, WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn")
        _, _, small_peak = run_with_rss([walvault, "backup", "--pg", f"host={small.sock} port={small.port} user=postgres",
                                         "--repo", f"file://{work}/wv-small", "--checkpoint", "fast"], env=env)
        small_size = small.size()
        clusters["small"] = small

        lines = [f"PostgreSQL 15, {args.rounds} rounds per tool, fast checkpoint, local disk; median wall time.", ""]
        for name, (size, times, stored) in results.items():
            lines += [f"Dataset `{name}`: {size / 2**20:.0f} MiB", "",
                      "| tool | median s | runs (s) | MiB/s | stored MiB | ratio (time vs walvault) |", "|---|---:|---|---:|---:|---:|"]
            wv = statistics.median(times["walvault"])
            for tool in times:
                m = statistics.median(times[tool])
                runs = ", ".join(f"{t:.1f}" for t in times[tool])
                lines.append(f"| {tool} | {m:.1f} | {runs} | {size / 2**20 / m:.0f} | {stored[tool] / 2**20:.0f} | {m / wv:.2f} |")
            lines.append("")
        lines.append(f"walvault peak RSS: pgbench {small_size / 2**20:.0f} MiB -> {small_peak:.0f} MiB; "
                     f"pgbench {results['pgbench'][0] / 2**20:.0f} MiB -> {rss['pgbench']:.0f} MiB; "
                     f"entropy {results['entropy'][0] / 2**20:.0f} MiB -> {rss['entropy']:.0f} MiB; "
                     f"mix {results['mix'][0] / 2**20:.0f} MiB -> {rss['mix']:.0f} MiB")
        text = "\n".join(lines)
        os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
        with open(os.path.join(ROOT, "target/bench/backup.md"), "w") as f:
            f.write(text + "\n")
        print(text)
    finally:
        for c in clusters.values():
            try:
                c.stop()
            except Exception:
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
