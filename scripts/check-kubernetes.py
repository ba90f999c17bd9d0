#!/usr/bin/env python3
"""packaging/kubernetes/walvault.yaml holds together.

`kubectl apply` needs a cluster, which the test machine does not have, so
this checks what a cluster would: every document parses and names its
apiVersion, kind and metadata.name; and what walvault needs: the sidecar
runs `stream` with the configuration file mounted where `--config` says,
its readiness probe asks `/health` on the port `metrics_addr` opens,
the key reaches both containers from a Secret (not a file the pod's group
could read), the service account carries a workload-identity role, and
archive_command runs `wal-push` with the same configuration. The
configuration file itself is loaded by the unit test
`the_packaged_files_are_valid`.
"""

import pathlib
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "packaging/kubernetes"


def fail(message: str) -> int:
    print(f"kubernetes: {message}")
    return 1


def main() -> int:
    docs = [d for d in yaml.safe_load_all((DIR / "walvault.yaml").read_text()) if d]
    for d in docs:
        for field in ("apiVersion", "kind"):
            if not d.get(field):
                return fail(f"a document without {field}")
        if not d.get("metadata", {}).get("name"):
            return fail(f"a {d['kind']} without metadata.name")
    by_kind = {d["kind"]: d for d in docs}
    sts = by_kind.get("StatefulSet")
    if not sts:
        return fail("no StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    account = by_kind.get("ServiceAccount")
    if not account or pod.get("serviceAccountName") != account["metadata"]["name"]:
        return fail("the pod does not use the ServiceAccount of the file")
    if "eks.amazonaws.com/role-arn" not in account["metadata"].get("annotations", {}):
        return fail("the ServiceAccount carries no workload-identity role")
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar = containers.get("walvault")
    if not sidecar:
        return fail("no walvault container")
    args = sidecar["args"]
    if args[-1] != "stream" or "--config" not in args:
        return fail(f"the sidecar does not run `--config FILE stream`: {args}")
    config_path = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    if config_path not in mounts:
        return fail(f"{config_path} is not mounted in the sidecar")
    config = tomllib.loads((DIR / "walvault.toml").read_text())
    port = int(config["stream"]["metrics_addr"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    probe = sidecar["readinessProbe"]["httpGet"]
    if probe["path"] != "/health" or ports.get(probe["port"]) != port:
        return fail(f"the readiness probe does not ask /health on port {port}")
    for name in ("walvault", "postgres"):
        env = {e["name"]: e for e in containers[name].get("env", [])}
        key = env.get("WALVAULT_KEY", {})
        if "secretKeyRef" not in key.get("valueFrom", {}):
            return fail(f"the {name} container does not get WALVAULT_KEY from a Secret")
    if "key" in config.get("repository", {}) or "key_file" in config.get("repository", {}):
        return fail("walvault.toml names a key; it comes from WALVAULT_KEY")
    archive = [a for a in containers["postgres"]["args"] if a.startswith("archive_command=")]
    if not archive or f"--config {config_path} wal-push %p" not in archive[0]:
        return fail("archive_command does not run wal-push with the same configuration")
    print(f"kubernetes: ok ({len(docs)} documents, sidecar probed on /health:{port})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
