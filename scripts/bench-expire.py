#!/usr/bin/env python3
"""Retention at scale: `expire` over an archive of --objects WAL objects on
the S3 server (s3s-fs on loopback), and the fixed cost of `list` and
`restore --dry-run` on the same archive.

A throwaway PostgreSQL 15 (1 MiB WAL segments) has its WAL position moved
past the objects (pg_resetwal), so one real base backup, taken with its WAL,
lies after --objects old WAL segment objects placed in the bucket under the
keys the sidecar would use. `expire --retain-full 1` must remove every one
of them (they are below the backup's start and no backup needs them):

  - list:        `walvault list --json`
  - dry run:     `walvault restore --dry-run` (plan: listing + gap walk)
  - expire plan: `walvault expire --retain-full 1 --dry-run --json`
  - expire:      `walvault expire --retain-full 1 --json` (batched deletes)

Then the same number of objects is placed after the backup's WAL, where
retention keeps them, and timed:

  - expire (kept): `walvault expire --retain-full 1 --json` (removes nothing,
                   stores the WAL index)
  - list (index):  `walvault list --json`, the WAL index and a listing after it
  - list --full:   `walvault list --json --full`, every object
  - wal-fetch:     `walvault wal-fetch` of the backup's last segment, and of
                   a segment past the archive's end (answered "not in the
                   archive", as recovery asks at its end)

Prints seconds for each and the objects left. Run as root (PostgreSQL runs
as the `postgres` user).

With --store moto the S3 server is moto (the objects are put through its S3
API), and with --store file a local-directory repository, which separates
walvault's own cost from the S3 server's.

Usage: scripts/bench-expire.py [--objects 100000] [--store s3s-fs|file]
                               [--walvault target/release/walvault]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGBIN = "/usr/lib/postgresql/15/bin"
KEY = "7f3c1a9e5b2d4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
SEGMENTS_PER_XLOGID = 4096  # with 1 MiB segments
VENV = os.environ.get("WALVAULT_TEST_HOME", "/opt/walvault-test") + "/venv"
MOTO_BUCKET = """
import boto3, os
boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="walvault")
"""
MOTO_FILL = """
import boto3, os, sys
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
body = os.urandom(1024)
def put(n):
    name = "00000001%08X%08X" % (n // 4096, n % 4096)
    s3.put_object(Bucket="walvault", Key="bench/wal/00000001/" + name, Body=body)
first = int(sys.argv[2]) if len(sys.argv) > 2 else 1
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, range(first, first + int(sys.argv[1]))))
"""


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


def timed(cmd, env):
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    print(f"{' '.join(cmd[1:4]):<40} {elapsed:8.2f} s", flush=True)
    return elapsed, out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--walvault", default=os.path.join(ROOT, "target/release/walvault"))
    ap.add_argument("--store", choices=["s3s-fs", "moto", "file"], default="s3s-fs")
    args = ap.parse_args()
    if args.walvault.endswith("target/release/walvault"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="walvault-bench-expire-")
    os.chmod(work, 0o755)
    procs = []
    try:
        # The store.
        s3root = os.path.join(work, "s3")
        os.makedirs(os.path.join(s3root, "walvault"))
        if args.store == "s3s-fs":
            s3port = free_port()
            s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
            procs.append(subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(s3port),
                                           "--access-key", "bench", "--secret-key", "benchsecret", s3root],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3port}", AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1",
                       WALVAULT_REPO="s3://walvault/bench", WALVAULT_KEY=KEY)
        elif args.store == "moto":
            motoport = free_port()
            procs.append(subprocess.Popen([os.path.join(VENV, "bin", "moto_server"), "--host", "127.0.0.1",
                                           "--port", str(motoport)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{motoport}", AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="benchsecret", AWS_REGION="us-east-1",
                       WALVAULT_REPO="s3://walvault/bench", WALVAULT_KEY=KEY)
            for _ in range(100):
                if subprocess.run([os.path.join(VENV, "bin", "python"), "-c", MOTO_BUCKET], env=env,
                                  capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
        else:
            env = dict(os.environ, WALVAULT_REPO=f"file://{s3root}/walvault/bench", WALVAULT_KEY=KEY)

        # The server, its WAL moved past the fake objects.
        pgdir = os.path.join(work, "pg")
        os.makedirs(pgdir)
        if os.geteuid() == 0:
            shutil.chown(pgdir, "postgres")
        data, sock = os.path.join(pgdir, "data"), pgdir
        subprocess.run([f"{PGBIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
                        "--wal-segsize=1"], check=True, capture_output=True, **demote())
        first_real = args.objects + 2 * SEGMENTS_PER_XLOGID
        start_file = "00000001%08X%08X" % (first_real // SEGMENTS_PER_XLOGID, 0)
        subprocess.run([f"{PGBIN}/pg_resetwal", "-l", start_file, data], check=True, capture_output=True, **demote())
        port = free_port()
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port={port}\nlisten_addresses=''\nunix_socket_directories='{sock}'\n"
                    "wal_level=replica\nmax_wal_senders=10\n")
        log = open(os.path.join(pgdir, "server.log"), "w")
        procs.append(subprocess.Popen([f"{PGBIN}/postgres", "-D", data], stdout=log, stderr=log, **demote()))
        for _ in range(200):
            if subprocess.run([f"{PGBIN}/pg_isready", "-h", sock, "-p", str(port)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        conn = f"host={sock} port={port} user=postgres"
        timed([args.walvault, "backup", "--pg", conn, "--checkpoint", "fast"], env)

        # The old WAL: one object per segment below the backup, as the sidecar names them.
        waldir = os.path.join(s3root, "walvault", "bench", "wal", "00000001")
        names = ["00000001%08X%08X" % (n // SEGMENTS_PER_XLOGID, n % SEGMENTS_PER_XLOGID)
                 for n in range(1, args.objects + 1)]
        t0 = time.monotonic()
        if args.store == "moto":
            subprocess.run([os.path.join(VENV, "bin", "python"), "-c", MOTO_FILL, str(args.objects)],
                           env=env, check=True)
        else:
            body = os.urandom(1024)
            for name in names:
                with open(os.path.join(waldir, name), "wb") as f:
                    f.write(body)
        placed = time.monotonic() - t0

        results = {}
        results["list"], _ = timed([args.walvault, "list", "--json"], env)
        results["restore --dry-run"], _ = timed([args.walvault, "restore", "--pgdata",
                                                  os.path.join(work, "restored"), "--dry-run"], env)
        results["expire --dry-run"], plan = timed([args.walvault, "expire", "--retain-full", "1",
                                                   "--dry-run", "--json"], env)
        planned = json.loads(plan)["wal_objects_removed"]
        results["expire"], done = timed([args.walvault, "expire", "--retain-full", "1", "--json"], env)
        removed = json.loads(done)["wal_objects_removed"]
        left = len(os.listdir(waldir)) if args.store != "moto" else "(not counted on moto)"
        print(f"archive: {args.objects} old WAL objects placed in {placed:.1f}s, then the real backup's WAL")
        print(f"expire removed {removed} WAL objects (planned {planned}); {left} objects left under wal/00000001/")
        if removed < args.objects:
            sys.exit("expire did not remove every old object")

        # The same number after the backup's WAL, where retention keeps them.
        _, listing = timed([args.walvault, "list", "--json"], env)
        last = json.loads(listing)["backups"][0]["wal_last_segment"]
        after = int(last[8:16], 16) * SEGMENTS_PER_XLOGID + int(last[16:24], 16) + 1
        t0 = time.monotonic()
        if args.store == "moto":
            subprocess.run([os.path.join(VENV, "bin", "python"), "-c", MOTO_FILL, str(args.objects), str(after)],
                           env=env, check=True)
        else:
            body = os.urandom(1024)
            for n in range(after, after + args.objects):
                name = "00000001%08X%08X" % (n // SEGMENTS_PER_XLOGID, n % SEGMENTS_PER_XLOGID)
                with open(os.path.join(waldir, name), "wb") as f:
                    f.write(body)
        placed = time.monotonic() - t0
        results["expire (kept)"], done = timed([args.walvault, "expire", "--retain-full", "1", "--json"], env)
        if json.loads(done)["wal_objects_removed"] != 0:
            sys.exit("expire removed WAL the backup needs")
        results["list (index)"], fast = timed([args.walvault, "list", "--json"], env)
        results["list --full"], full = timed([args.walvault, "list", "--json", "--full"], env)
        fast, full = json.loads(fast), json.loads(full)
        if fast["wal"] != full["wal"]:
            sys.exit("list from the index differs from list --full")
        results["wal-fetch"], _ = timed([args.walvault, "wal-fetch", last, os.path.join(work, "fetched")], env)
        n = after + args.objects + 16
        missing = "00000001%08X%08X" % (n // SEGMENTS_PER_XLOGID, n % SEGMENTS_PER_XLOGID)
        t0 = time.monotonic()
        out = subprocess.run([args.walvault, "wal-fetch", missing, os.path.join(work, "missing")],
                             capture_output=True, text=True, env=env)
        results["wal-fetch (not archived)"] = time.monotonic() - t0
        if out.returncode == 0 or os.path.exists(os.path.join(work, "missing")):
            sys.exit(f"wal-fetch of {missing}, past the archive's end, did not say it is missing")
        print(f"{'wal-fetch (not archived)':<40} {results['wal-fetch (not archived)']:8.2f} s", flush=True)
        print(f"{args.objects} kept WAL objects placed after the backup in {placed:.1f}s; "
              f"list read the index ({fast['wal_listing']['source']}) and listed "
              f"{fast['wal_listing']['listed_objects']} objects, --full {full['wal_listing']['listed_objects']}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
