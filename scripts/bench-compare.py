#!/usr/bin/env python3
"""Two walvault builds side by side: backup, restore and WAL archiving.

For checking that a change does not make walvault slower or bigger. Both
binaries run against the same PostgreSQL 15 cluster, alternating A B A B
(so a drift of the machine hits both alike), --rounds times each:

  - backup: `walvault backup --checkpoint fast` of pgbench at --scale into a
    fresh encrypted local-directory repository;
  - restore: `walvault restore` of that backup into an empty directory
    (files written and synced; the server is not started);
  - archive: `walvault stream` catching up with --wal-mib of WAL that a slot
    holds on the server, until the archive holds it all (then SIGTERM).

Reports the median seconds, the peak RSS and the ratio B/A per pair.

Usage: scripts/bench-compare.py --baseline OLD_BINARY [--candidate NEW_BINARY]
           [--scale 50] [--rounds 3] [--wal-mib 512] [--steps backup,restore,archive]
(each round's seconds follow the table).
(the candidate defaults to target/release/walvault, built first).
"""
import argparse, importlib.util, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bb", os.path.join(ROOT, "scripts/bench-backup.py"))
bb = importlib.util.module_from_spec(spec); spec.loader.exec_module(bb)


def stream_catch_up(walvault, c, repo, env, target_lsn):
    """Runs `walvault stream` until `list --json` shows the archive at
    target_lsn; returns (seconds, peak RSS MiB)."""
    t0 = time.monotonic()
    p = subprocess.Popen([walvault, "stream", "--pg", f"host={c.sock} port={c.port} user=postgres",
                          "--repo", f"file://{repo}", "--slot", "bench", "--flush-interval", "1s"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            out = subprocess.run([walvault, "list", "--json", "--repo", f"file://{repo}"],
                                 capture_output=True, text=True, env=env)
            if out.returncode == 0:
                tl = json.loads(out.stdout)["wal"]["timelines"]
                if tl:
                    hi, lo = tl[0]["end_lsn"].split("/")
                    if (int(hi, 16) << 32 | int(lo, 16)) >= target_lsn:
                        break
            if p.poll() is not None:
                raise RuntimeError("walvault stream exited early")
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    finally:
        p.send_signal(signal.SIGTERM)
    _, _, usage = os.wait4(p.pid, 0)
    return elapsed, usage.ru_maxrss / 1024


def lsn_int(text):
    hi, lo = text.split("/")
    return int(hi, 16) << 32 | int(lo, 16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--candidate", default=os.path.join(ROOT, "target/release/walvault"))
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wal-mib", type=int, default=512)
    ap.add_argument("--steps", default="backup,restore,archive",
                    help="which steps to run, comma-separated (backup and restore go together)")
    args = ap.parse_args()
    steps = args.steps.split(",")
    if args.candidate == os.path.join(ROOT, "target/release/walvault"):
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    bins = {"A": args.baseline, "B": args.candidate}
    work = tempfile.mkdtemp(prefix="walvault-compare-")
    os.chmod(work, 0o755)
    env = dict(os.environ, WALVAULT_KEY=bb.KEY, WALVAULT_LOG_LEVEL="warn")
    res = {k: {"backup": [], "restore": [], "archive": []} for k in bins}
    c = bb.Cluster(work, "pg")
    try:
        subprocess.run([f"{bb.PGBIN}/pgbench", "-h", c.sock, "-p", str(c.port), "-U", "postgres",
                        "-i", "-s", str(args.scale), "-q", "postgres"], check=True, capture_output=True)
        c.psql("CHECKPOINT")
        size = c.size()
        for r in range(args.rounds if "backup" in steps or "restore" in steps else 0):
            for k, walvault in bins.items():
                repo = os.path.join(work, f"repo-{k}-{r}")
                t, _, peak = bb.run_with_rss([walvault, "backup", "--pg", f"host={c.sock} port={c.port} user=postgres",
                                              "--repo", f"file://{repo}", "--checkpoint", "fast"], env=env)
                res[k]["backup"].append((t, peak))
                target = os.path.join(work, f"restored-{k}-{r}")
                t, _, peak = bb.run_with_rss([walvault, "restore", "--repo", f"file://{repo}",
                                              "--pgdata", target], env=env)
                res[k]["restore"].append((t, peak))
                shutil.rmtree(target)
                shutil.rmtree(repo)
        # WAL archiving: a slot holds --wal-mib of new WAL, then each build catches up.
        for r in range(args.rounds if "archive" in steps else 0):
            for k, walvault in bins.items():
                c.psql("SELECT pg_create_physical_replication_slot('bench', true)")
                start = lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
                while lsn_int(c.psql("SELECT pg_current_wal_lsn()")) - start < args.wal_mib << 20:
                    c.psql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now(), repeat('x', 22) FROM generate_series(1, 200000)")
                c.psql("SELECT pg_switch_wal()")
                end = lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
                # The inserts' dirty pages written out first, so the
                # catch-up does not share the disk with a checkpoint.
                c.psql("CHECKPOINT")
                os.sync()
                repo = os.path.join(work, f"wal-{k}-{r}")
                t, peak = stream_catch_up(walvault, c, repo, env, end)
                res[k]["archive"].append((t, peak))
                shutil.rmtree(repo)
                c.psql("SELECT pg_drop_replication_slot('bench')")
    finally:
        c.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"PostgreSQL 15, pgbench scale {args.scale} ({size / 2**20:.0f} MiB), {args.wal_mib} MiB of WAL to archive, "
             f"{args.rounds} rounds alternating; A = {args.baseline}, B = {args.candidate}", "",
             "| step | A median s | B median s | B/A (median of pairs) | A peak RSS MiB | B peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for step in ("backup", "restore", "archive"):
        a, b = res["A"][step], res["B"][step]
        if not a:
            continue
        ratio = statistics.median(tb / ta for (ta, _), (tb, _) in zip(a, b))
        lines.append(f"| {step} | {statistics.median(t for t, _ in a):.2f} | {statistics.median(t for t, _ in b):.2f} | "
                     f"{ratio:.2f} | {max(p for _, p in a):.0f} | {max(p for _, p in b):.0f} |")
    lines.append("")
    for step in ("backup", "restore", "archive"):
        for k in bins:
            if res[k][step]:
                lines.append(f"{step} {k}: " + " ".join(f"{t:.2f}" for t, _ in res[k][step]))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
