#!/usr/bin/env python3
"""End-to-end WAL ingest benchmark.

In one run, on one PostgreSQL 15 server (16 MiB segments, fsync on), measure
the TPS of a load (--load pgbench: `pgbench -N`; --load bulk: --clients
clients each inserting 5,000-row batches with INSERT ... SELECT, as fast as
the server writes WAL):
  - with no archiver,
  - with `walvault stream` (zstd level 3 + AES-256-GCM) into the s3s-fs S3
    server on loopback,
  - with `pg_receivewal` (to a local directory, with a slot),
in rotating order for --rounds rounds (each run starts after VACUUM and
CHECKPOINT, each archiver with a fresh slot and repository). Reports the
median TPS of each, the median of the per-round TPS ratios against no
archiver (so a drift of the machine over the run cancels out), and for
each archiver its CPU seconds per GiB of WAL, its peak RSS and how long it
took after the load to have received everything (catch-up). Writes a
markdown table to target/bench/ingest.md and stdout.

Usage: scripts/bench-ingest.py [--load pgbench|bulk] [--seconds 30] [--rounds 3]
           [--scale 10] [--clients 4] [--walvault BIN]
"""
import argparse, os, pwd, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

PGBIN = "/usr/lib/postgresql/15/bin"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "5a" * 32


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def as_pg():
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    def demote():
        os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
    return {"preexec_fn": demote}


def psql(port, sql):
    out = subprocess.run([f"{PGBIN}/psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qAtX", "-c", sql, "postgres"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def lsn(text):
    hi, lo = text.split("/"); return (int(hi, 16) << 32) | int(lo, 16)


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


BULK_SQL = ("INSERT INTO bulk SELECT g, md5(g::text) || md5((g * 7)::text), 'event ' || (g % 97), now() "
            "FROM generate_series(1, 5000) g;\n")


def pgbench_tps(port, seconds, clients, script=None):
    load = ["-n", "-f", script] if script else ["-N"]
    out = subprocess.run([f"{PGBIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *load, "-T", str(seconds),
                          "-c", str(clients), "-j", str(min(clients, 2)), "postgres"], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--load", choices=["pgbench", "bulk"], default="pgbench")
    ap.add_argument("--walvault", help="walvault binary (default: build target/release/walvault)")
    args = ap.parse_args()

    walvault = args.walvault
    if not walvault:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        walvault = os.path.join(ROOT, "target/release/walvault")
    s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")

    work = tempfile.mkdtemp(prefix="walvault-bench-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data")
    os.makedirs(data); 
    if os.geteuid() == 0:
        shutil.chown(data, "postgres"); os.chmod(data, 0o700)
    sock = os.path.join(work, "sock"); os.makedirs(sock)
    if os.geteuid() == 0:
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"], check=True,
                   capture_output=True, **as_pg())
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port={port}\nlisten_addresses='127.0.0.1'\nunix_socket_directories='{sock}'\n"
                "wal_level=replica\nmax_wal_senders=10\nmax_replication_slots=10\nshared_buffers='256MB'\n"
                "max_wal_size='4GB'\ncheckpoint_timeout='30min'\n")
    server_log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen([f"{PGBIN}/postgres", "-D", data], stdout=server_log, stderr=server_log, **as_pg())
    s3dir = os.path.join(work, "s3"); os.makedirs(os.path.join(s3dir, "bench"))
    s3port = free_port()
    s3 = subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(s3port), "--access-key", "bench", "--secret-key", "benchsecret", s3dir],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                psql(port, "SELECT 1"); break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        init = subprocess.run([f"{PGBIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-i", "-s", str(args.scale), "-q", "postgres"],
                              capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {init.stderr}")
        script = None
        if args.load == "bulk":
            psql(port, "CREATE TABLE bulk (id bigint, payload text, note text, at timestamptz)")
            script = os.path.join(work, "bulk.sql")
            with open(script, "w") as f:
                f.write(BULK_SQL)
        psql(port, "CHECKPOINT")
        env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3port}", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1", WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn")
        results = {"none": [], "walvault": [], "pg_receivewal": []}
        ratios = {"walvault": [], "pg_receivewal": []}
        # Per archiver: WAL bytes, CPU seconds, peak RSS, catch-up seconds.
        usage = {k: {"wal": 0, "cpu": 0.0, "rss": 0.0, "catchup": []} for k in ratios}
        pgbench_tps(port, 5, args.clients, script)  # warm-up

        def settle():
            if script:
                psql(port, "TRUNCATE bulk")
            psql(port, "VACUUM"); psql(port, "CHECKPOINT")

        def run_none(r):
            settle()
            return pgbench_tps(port, args.seconds, args.clients, script)

        def measure(name, pid, app):
            """Runs the load while `pid` archives; waits until the archiver
            reports all of it written (walvault reports only what is stored
            in the repository; pg_receivewal fsyncs at segment ends, so its
            write position is what it has received); records its usage."""
            time.sleep(2)
            c0 = proc_cpu_seconds(pid); l0 = lsn(psql(port, "SELECT pg_current_wal_lsn()"))
            tps = pgbench_tps(port, args.seconds, args.clients, script)
            l1 = lsn(psql(port, "SELECT pg_current_wal_lsn()"))
            t0 = time.monotonic()
            for _ in range(3000):
                sent = psql(port, f"SELECT coalesce(max(write_lsn)::text, '0/0') FROM pg_stat_replication WHERE application_name='{app}'")
                if sent and lsn(sent) >= l1:
                    break
                time.sleep(0.1)
            u = usage[name]
            u["catchup"].append(time.monotonic() - t0)
            u["cpu"] += proc_cpu_seconds(pid) - c0; u["wal"] += l1 - l0
            u["rss"] = max(u["rss"], peak_rss_mib(pid))
            return tps

        def run_walvault(r):
            settle()
            wv = subprocess.Popen([walvault, "stream", "--pg", f"host=127.0.0.1 port={port} user=postgres sslmode=disable",
                                   "--repo", f"s3://bench/round{r}", "--slot", f"walvault{r}"], env=env, stderr=subprocess.DEVNULL)
            tps = measure("walvault", wv.pid, "walvault")
            wv.send_signal(signal.SIGTERM); wv.wait(timeout=120)
            psql(port, f"SELECT pg_drop_replication_slot('walvault{r}')")
            return tps

        def run_receivewal(r):
            settle()
            rdir = os.path.join(work, f"receivewal-{r}"); os.makedirs(rdir)
            subprocess.run([f"{PGBIN}/pg_receivewal", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "--create-slot", "-S", f"receivewal{r}"],
                           check=True, capture_output=True)
            rw = subprocess.Popen([f"{PGBIN}/pg_receivewal", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-S", f"receivewal{r}",
                                   "-D", rdir, "-n"], stderr=subprocess.DEVNULL)
            tps = measure("pg_receivewal", rw.pid, "pg_receivewal")
            rw.send_signal(signal.SIGINT); rw.wait(timeout=60)
            shutil.rmtree(rdir)
            psql(port, f"SELECT pg_drop_replication_slot('receivewal{r}')")
            return tps

        runners = [("none", run_none), ("walvault", run_walvault), ("pg_receivewal", run_receivewal)]
        for r in range(args.rounds):
            order = runners[r % 3:] + runners[:r % 3]
            this = {}
            for name, fn in order:
                this[name] = fn(r)
                results[name].append(this[name])
            for k in ratios:
                ratios[k].append(this[k] / this["none"])
        med = {k: statistics.median(v) for k, v in results.items()}
        what = "pgbench -N" if args.load == "pgbench" else "bulk INSERT ... SELECT of 5,000 rows per transaction"
        lines = [
            f"{what}, scale {args.scale}, {args.clients} clients, {args.seconds} s per run, {args.rounds} rounds (median TPS):",
            "",
            "| archiver | median TPS | runs (TPS) | median per-round TPS ratio vs none |",
            "|---|---:|---|---:|",
        ]
        for k in ("none", "walvault", "pg_receivewal"):
            runs = ", ".join(f"{t:.0f}" for t in results[k])
            ratio = statistics.median(ratios[k]) if k in ratios else 1.0
            lines.append(f"| {k} | {med[k]:.0f} | {runs} | {ratio:.3f} |")
        lines += ["", "| archiver | GiB of WAL | CPU s | CPU s per GiB | peak RSS MiB | catch-up after the load, s (per run) |",
                  "|---|---:|---:|---:|---:|---|"]
        for k, u in usage.items():
            gib = u["wal"] / (1 << 30)
            catchup = ", ".join(f"{c:.1f}" for c in u["catchup"])
            lines.append(f"| {k} | {gib:.2f} | {u['cpu']:.1f} | {u['cpu'] / gib if gib else 0:.1f} | {u['rss']:.0f} | {catchup} |")
        text = "\n".join(lines)
        os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
        with open(os.path.join(ROOT, "target/bench/ingest.md"), "w") as f:
            f.write(text + "\n")
        print(text)
    finally:
        s3.kill(); server.send_signal(signal.SIGINT); server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
