#!/usr/bin/env python3
"""The price of zero data loss: pgbench TPS and commit latency with
`walvault stream --synchronous` (PostgreSQL waits for the store) against the
default mode (PostgreSQL does not wait), at several client counts, on the
s3s-fs S3 server on loopback and behind a proxy that delays every byte sent
to it by --delay-ms (the kernel here has no netem; the proxy is a delay line,
so it adds latency without limiting throughput).

PostgreSQL 15, pgbench scale 10, `pgbench -N` for --seconds per run, each
run with a fresh slot and repository prefix, after VACUUM and CHECKPOINT.
Synchronous runs set synchronous_standby_names = 'walvault' and wait until
the stream is the synchronous standby before pgbench starts. Latencies are
from pgbench's per-transaction log (-l). Writes target/bench/sync.md and
prints it.

Usage: scripts/bench-sync.py [--seconds 15] [--clients 1,4,16] [--delay-ms 20] [--walvault BINARY]
"""
import argparse, asyncio, glob, os, pwd, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

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


class DelayProxy:
    """Forwards 127.0.0.1:port to target; bytes towards the target leave
    `delay` seconds after they arrived (in order), answers at once."""

    def __init__(self, target_port, delay):
        self.target_port, self.delay = target_port, delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)

        async def start():
            await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _pump(self, reader, writer, delay):
        queue = asyncio.Queue()

        async def receive():
            while True:
                data = await reader.read(1 << 16)
                await queue.put((time.monotonic() + delay, data))
                if not data:
                    return

        async def send():
            while True:
                at, data = await queue.get()
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    try:
                        writer.write_eof()
                    except OSError:
                        pass
                    return
                writer.write(data)
                await writer.drain()
        try:
            await asyncio.gather(receive(), send())
        except (ConnectionError, OSError):
            writer.close()

    async def _handle(self, client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close(); return
        await asyncio.gather(self._pump(client_r, server_w, self.delay), self._pump(server_r, client_w, 0.0))
        client_w.close(); server_w.close()


def pgbench(port, seconds, clients, logdir):
    for f in glob.glob(os.path.join(logdir, "pgbench_log*")):
        os.remove(f)
    out = subprocess.run([f"{PGBIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-N", "-T", str(seconds),
                          "-c", str(clients), "-j", str(min(clients, 2)), "-l", "--log-prefix", os.path.join(logdir, "pgbench_log"),
                          "postgres"], check=True, capture_output=True, text=True)
    tps = next(float(l.split()[2]) for l in out.stdout.splitlines() if l.startswith("tps ="))
    lat = []
    for f in glob.glob(os.path.join(logdir, "pgbench_log*")):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
    return tps, p(0.50), p(0.99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--walvault", help="a walvault binary to use instead of building the release one")
    ap.add_argument("--keep-work", action="store_true", help="keep the work directory (server and stream logs)")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.walvault:
        walvault = os.path.abspath(args.walvault)
    else:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
        walvault = os.path.join(ROOT, "target/release/walvault")
    s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")

    work = tempfile.mkdtemp(prefix="walvault-bench-sync-")
    os.chmod(work, 0o755)
    data = os.path.join(work, "data"); os.makedirs(data)
    logdir = os.path.join(work, "logs"); os.makedirs(logdir)
    sock = os.path.join(work, "sock"); os.makedirs(sock)
    if os.geteuid() == 0:
        for d in (data, sock):
            shutil.chown(d, "postgres")
        os.chmod(data, 0o700)
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
    proxy = DelayProxy(s3port, args.delay_ms / 1000.0)
    stores = {"loopback": s3port, f"+{args.delay_ms:g} ms": proxy.port}
    stream = None
    try:
        for _ in range(100):
            try:
                psql(port, "SELECT 1"); break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        subprocess.run([f"{PGBIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-i", "-s", "10", "-q", "postgres"],
                       check=True, capture_output=True)
        pgbench(port, 3, 4, logdir)  # warm-up
        results = {}
        n = 0
        for store, sport in stores.items():
            env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{sport}", AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1", WALVAULT_KEY=KEY, WALVAULT_LOG_LEVEL="warn")
            for c in clients:
                for mode in ("default", "synchronous"):
                    n += 1
                    psql(port, "VACUUM"); psql(port, "CHECKPOINT")
                    slot = f"bench{n}"
                    cmd = [walvault, "stream", "--pg", f"host=127.0.0.1 port={port} user=postgres sslmode=disable",
                           "--repo", f"s3://bench/run{n}", "--slot", slot]
                    if mode == "synchronous":
                        cmd.append("--synchronous")
                    stream = subprocess.Popen(cmd, env=dict(env, WALVAULT_LOG_LEVEL="info") if args.keep_work else env,
                                              stderr=open(os.path.join(work, f"stream{n}.log"), "w"))
                    want = "sync" if mode == "synchronous" else None
                    if want:
                        psql(port, "ALTER SYSTEM SET synchronous_standby_names = 'walvault'")
                        psql(port, "SELECT pg_reload_conf()")
                    deadline = time.monotonic() + 60
                    while True:
                        state = psql(port, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walvault' AND state = 'streaming'")
                        if state and (want is None or state == want):
                            break
                        if time.monotonic() > deadline or stream.poll() is not None:
                            raise RuntimeError(f"the stream did not start streaming (state {state!r}); see {work}/stream{n}.log")
                        time.sleep(0.1)
                    results[(store, c, mode)] = pgbench(port, args.seconds, c, logdir)
                    if want:
                        psql(port, "ALTER SYSTEM RESET synchronous_standby_names")
                        psql(port, "SELECT pg_reload_conf()")
                    stream.send_signal(signal.SIGTERM); stream.wait(timeout=120); stream = None
                    psql(port, f"SELECT pg_drop_replication_slot('{slot}')")
        lines = [f"PostgreSQL 15, pgbench -N scale 10, {args.seconds} s per run; walvault stream into s3s-fs on loopback, "
                 f"directly and through a proxy adding {args.delay_ms:g} ms to every byte sent to the store.", "",
                 "| store | clients | default TPS | synchronous TPS | sync / default | default p50 / p99 ms | synchronous p50 / p99 ms |",
                 "|---|---:|---:|---:|---:|---|---|"]
        for store in stores:
            for c in clients:
                d, s = results[(store, c, "default")], results[(store, c, "synchronous")]
                lines.append(f"| {store} | {c} | {d[0]:.0f} | {s[0]:.0f} | {s[0] / d[0]:.2f} | {d[1]:.2f} / {d[2]:.2f} | {s[1]:.2f} / {s[2]:.2f} |")
        text = "\n".join(lines)
        os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
        with open(os.path.join(ROOT, "target/bench/sync.md"), "w") as f:
            f.write(text + "\n")
        print(text)
    finally:
        if stream is not None:
            stream.kill()
        server.send_signal(signal.SIGINT); server.wait(timeout=60)
        s3.kill(); s3.wait()
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
