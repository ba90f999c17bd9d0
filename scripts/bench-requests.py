#!/usr/bin/env python3
"""Store requests and their monthly cost: the sidecar at a steady WAL rate,
and a day's backup and expire.

A throwaway PostgreSQL 15 (16 MiB segments, as production) writes WAL at a
steady rate (inserts sized from a calibration, every 100 ms) while
`walvault stream` archives it into s3s-fs on loopback for --seconds. The
requests come from the sidecar's own count, logged when it stops (PUT, GET,
LIST, DELETE); per hour is that count scaled to 3,600 s. Then one
`walvault backup` and one `walvault expire --retain-full 7` are counted the
same way.

Cases: idle (no writes), 1 MB/s and 20 MB/s of WAL, each at
--flush-interval 1s and 10s.

Monthly cost: 730 hours at S3 Standard list prices (us-east-1): PUT, COPY,
POST and LIST $0.005 per 1,000; GET $0.0004 per 1,000; DELETE free.

Usage: scripts/bench-requests.py [--seconds 60] [--walvault target/release/walvault]
"""
import argparse, os, re, shutil, signal, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGBIN = "/usr/lib/postgresql/15/bin"
KEY = "7f3c1a9e5b2d4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
PRICE_PER_1000 = {"PUT": 0.005, "LIST": 0.005, "GET": 0.0004, "DELETE": 0.0}
HOURS_PER_MONTH = 730


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demote():
    if os.geteuid() != 0:
        return {}
    import pwd
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def counts(log):
    """The last 'PUT n GET n LIST n DELETE n' in a log."""
    found = re.findall(r"PUT (\d+) GET (\d+) LIST (\d+) DELETE (\d+)", log)
    if not found:
        sys.exit(f"no request counts in:\n{log[-2000:]}")
    put, get, lst, delete = map(int, found[-1])
    return {"PUT": put, "GET": get, "LIST": lst, "DELETE": delete}


def monthly(per_hour):
    return sum(per_hour[k] * HOURS_PER_MONTH * PRICE_PER_1000[k] / 1000 for k in per_hour)


class Setup:
    def __init__(self, work, walvault):
        self.walvault = walvault
        self.procs = []
        s3root = os.path.join(work, "s3")
        os.makedirs(os.path.join(s3root, "walvault"))
        port = free_port()
        s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
        self.procs.append(subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(port),
                                            "--access-key", "bench", "--secret-key", "benchsecret", s3root],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                        AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1",
                        WALVAULT_REPO="s3://walvault/requests", WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="info")
        pgdir = os.path.join(work, "pg")
        os.makedirs(pgdir)
        if os.geteuid() == 0:
            shutil.chown(pgdir, "postgres")
        self.sock, data = pgdir, os.path.join(pgdir, "data")
        subprocess.run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True, **demote())
        self.port = free_port()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port={self.port}\nlisten_addresses=''\nunix_socket_directories='{self.sock}'\n"
                    "wal_level=replica\nmax_wal_senders=10\nmax_wal_size='4GB'\nsynchronous_commit=off\n")
        log = open(os.path.join(pgdir, "server.log"), "w")
        self.procs.append(subprocess.Popen([f"{PGBIN}/postgres", "-D", data], stdout=log, stderr=log, **demote()))
        for _ in range(200):
            if subprocess.run([f"{PGBIN}/pg_isready", "-h", self.sock, "-p", str(self.port)],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        self.conn = f"host={self.sock} port={self.port} user=postgres"
        self.psql("CREATE TABLE filler (x text)")

    def psql(self, sql):
        return subprocess.run([f"{PGBIN}/psql", "-h", self.sock, "-p", str(self.port), "-U", "postgres", "-qAtX",
                               "-c", sql, "postgres"], check=True, capture_output=True, text=True).stdout.strip()

    def lsn(self):
        hi, lo = self.psql("SELECT pg_current_wal_insert_lsn()").split("/")
        return int(hi, 16) << 32 | int(lo, 16)

    def wal_bytes_per_row(self):
        before = self.lsn()
        self.psql("INSERT INTO filler SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 2000)")
        return (self.lsn() - before) / 2000

    def run(self, cmd):
        out = subprocess.run([self.walvault] + cmd, capture_output=True, text=True, env=self.env)
        if out.returncode != 0:
            sys.exit(f"walvault {' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
        return counts(out.stderr)

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            p.wait()


def stream_for(setup, seconds, flush, rate_bytes):
    """Streams for `seconds` while writing `rate_bytes` of WAL a second;
    returns (requests by method, WAL bytes written)."""
    per_row = setup.wal_bytes_per_row()
    p = subprocess.Popen([setup.walvault, "stream", "--pg", setup.conn, "--flush-interval", flush],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=setup.env)
    time.sleep(2)  # connected and caught up before the measured window
    start_lsn = setup.lsn()
    t_end = time.monotonic() + seconds
    rows_per_tick = int(rate_bytes * 0.1 / per_row) if rate_bytes else 0
    next_tick = time.monotonic()
    while time.monotonic() < t_end:
        if rows_per_tick:
            setup.psql(f"INSERT INTO filler SELECT repeat(md5(random()::text), 32) FROM generate_series(1, {rows_per_tick})")
        next_tick += 0.1
        time.sleep(max(0.0, next_tick - time.monotonic()))
    written = setup.lsn() - start_lsn
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    return counts(err), written


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--walvault", default=os.path.join(ROOT, "target/release/walvault"))
    args = ap.parse_args()
    if args.walvault.endswith("target/release/walvault"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="walvault-bench-requests-")
    os.chmod(work, 0o755)
    setup = Setup(work, args.walvault)
    try:
        print(f"{'case':<28} {'WAL MB/s':>9} {'PUT/h':>8} {'GET/h':>7} {'LIST/h':>7} {'DEL/h':>7} {'$/month':>9}")
        for label, rate, flush in [("idle, flush 1s", 0, "1s"), ("idle, flush 10s", 0, "10s"),
                                   ("1 MB/s, flush 1s", 1_000_000, "1s"), ("1 MB/s, flush 10s", 1_000_000, "10s"),
                                   ("20 MB/s, flush 1s", 20_000_000, "1s"), ("20 MB/s, flush 10s", 20_000_000, "10s")]:
            # The stream's count includes its start (listing the archive):
            # measured once per case and taken off by a zero-length run.
            base, _ = stream_for(setup, 0, flush, 0)
            got, written = stream_for(setup, args.seconds, flush, rate)
            per_hour = {k: max(0, got[k] - base[k]) * 3600 / args.seconds for k in got}
            print(f"{label:<28} {written / args.seconds / 1e6:9.2f} {per_hour['PUT']:8.0f} {per_hour['GET']:7.0f} "
                  f"{per_hour['LIST']:7.0f} {per_hour['DELETE']:7.0f} {monthly(per_hour):9.2f}", flush=True)
        backup = setup.run(["backup", "--pg", setup.conn, "--checkpoint", "fast"])
        expire = setup.run(["expire", "--retain-full", "7"])
        db_mb = int(setup.psql("SELECT pg_database_size('postgres')")) / 1e6
        for label, c in [(f"one backup ({db_mb:.0f} MB database)", backup), ("one expire", expire)]:
            cost = sum(c[k] * PRICE_PER_1000[k] / 1000 for k in c)
            print(f"{label:<28} PUT {c['PUT']} GET {c['GET']} LIST {c['LIST']} DELETE {c['DELETE']}: ${cost:.5f}")
    finally:
        setup.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
