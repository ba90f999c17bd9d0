#!/usr/bin/env python3
"""Peak RSS of `walvault backup` at several database sizes (PostgreSQL 15).

For each pgbench scale (default 10, 100 and 200: about 0.17, 1.5 and 3 GiB)
a cluster is created, and `walvault backup --checkpoint fast` (release
build, defaults) runs --rounds times into a local-directory repository.
The peak RSS is `ru_maxrss` from `os.wait4`. Prints a Markdown table.

Usage: scripts/bench-backup-memory.py [--scales 10,100,200] [--rounds 2]
"""
import argparse, importlib.util, os, subprocess, sys, tempfile, shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("bb", os.path.join(ROOT, "scripts/bench-backup.py"))
bb = importlib.util.module_from_spec(spec); spec.loader.exec_module(bb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="10,100,200")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT, check=True)
    walvault = os.path.join(ROOT, "target/release/walvault")
    work = tempfile.mkdtemp(prefix="walvault-membench-")
    os.chmod(work, 0o755)
    env = dict(os.environ, WALVAULT_KEY=bb.KEY, WALVAULT_LOG_LEVEL="warn")
    lines = ["| database | seconds | peak RSS |", "|---|---|---|"]
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            c = bb.Cluster(work, f"s{scale}")
            try:
                subprocess.run([f"{bb.PGBIN}/pgbench", "-h", c.sock, "-p", str(c.port), "-U", "postgres", "-i", "-s", str(scale), "-q", "postgres"],
                               check=True, capture_output=True)
                c.psql("CHECKPOINT")
                runs = []
                for r in range(args.rounds):
                    repo = os.path.join(work, f"repo-{scale}-{r}")
                    t, _, peak = bb.run_with_rss([walvault, "backup", "--pg", f"host={c.sock} port={c.port} user=postgres",
                                                  "--repo", f"file://{repo}", "--checkpoint", "fast"], env=env)
                    runs.append((t, peak))
                    shutil.rmtree(repo)
                lines.append(f"| pgbench scale {scale}, {c.size() / 2**20:.0f} MiB | {', '.join(f'{t:.1f}' for t, _ in runs)} | "
                             f"{', '.join(f'{p:.0f} MiB' for _, p in runs)} |")
                print(lines[-1], flush=True)
            finally:
                c.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
