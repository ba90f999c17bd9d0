#!/usr/bin/env python3
"""Checks the layout rules of docs/architecture.md against the code itself.

Reads every `crate::` path in src/ (comments and test modules left out) and
checks that:
  - every import between top-level modules points down the layer order
    below (or sideways within one layer), and no two modules import each
    other, directly or around a circle;
  - the root of src/ holds at most MAX_ROOT_FILES files;
  - no file has more than MAX_LINES lines before its test module;
  - no command file of src/cli/ has more than MAX_COMMAND_LINES.
Prints the module graph and every violation; exits 1 on any.

Usage: scripts/check-layout.py [--graph]
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# Lowest first: a module may import modules of its own layer or below.
LAYERS = [
    {"error", "lsn", "local_file", "malloc", "progress", "schedule", "shutdown", "telemetry"},
    {"protocol", "format"},
    {"storage"},
    {"pipeline", "config"},
    {"wal"},
    {"backup"},
    {"inspect", "retention", "restore", "metrics"},
    {"sidecar"},
    {"cli"},
]
# Test-only code, behind the `fuzzing` feature: it may reach anything.
EXEMPT = {"fuzzing", "lib", "main"}
MAX_ROOT_FILES = 12
MAX_LINES = 600
MAX_COMMAND_LINES = 250
CLI_SHARED = {"mod.rs", "args.rs", "parse.rs"}


def rank(module):
    for i, layer in enumerate(LAYERS):
        if module in layer:
            return i
    return None


def code_of(text):
    """The text before the test module, without comments."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests", text, re.M)
    if cut:
        text = text[: cut.start()]
    return re.sub(r"//[^\n]*", "", text)


def main():
    problems = []
    edges = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)
            top = rel.split(os.sep)[0].removesuffix(".rs")
            text = open(path, encoding="utf-8").read()
            before_tests = re.split(r"^#\[cfg\(test\)\]\s*\nmod tests", text, flags=re.M)[0]
            lines = before_tests.count("\n")
            if lines > MAX_LINES:
                problems.append(f"{rel}: {lines} lines before its tests (at most {MAX_LINES})")
            if rel.startswith("cli" + os.sep) and os.sep not in rel[4:] and name not in CLI_SHARED:
                if lines > MAX_COMMAND_LINES:
                    problems.append(
                        f"{rel}: a command file of {lines} lines (at most {MAX_COMMAND_LINES}): "
                        "its decisions belong in the library")
            code = code_of(text)
            targets = set(re.findall(r"\bcrate::([a-z_]+)", code))
            for group in re.findall(r"\buse crate::\{([^}]*)\}", code):
                targets |= set(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
            for t in targets - {top}:
                edges.setdefault(top, {}).setdefault(t, []).append(rel)
    root_files = [f for f in os.listdir(ROOT) if f.endswith(".rs")]
    if len(root_files) > MAX_ROOT_FILES:
        problems.append(f"src/ holds {len(root_files)} files at its root (at most {MAX_ROOT_FILES})")
    for src, dsts in sorted(edges.items()):
        if src in EXEMPT:
            continue
        rs = rank(src)
        if rs is None:
            problems.append(f"src/{src}: a top-level module in no layer (add it to LAYERS)")
            continue
        for dst, files in sorted(dsts.items()):
            rd = rank(dst)
            if dst in EXEMPT:
                problems.append(f"{src} -> {dst} ({files[0]}): nothing imports test-only code")
            elif rd is None:
                problems.append(f"src/{dst}: a top-level module in no layer (add it to LAYERS)")
            elif rd > rs:
                problems.append(f"{src} -> {dst} runs back up ({', '.join(sorted(set(files)))})")
    # Circles between modules (sideways imports included).
    graph = {s: {d for d in ds if d not in EXEMPT} for s, ds in edges.items() if s not in EXEMPT}
    seen, stack, on_stack = set(), [], set()

    def visit(node):
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                circle = stack[stack.index(nxt):] + [nxt]
                problems.append("circle: " + " -> ".join(circle))
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    if "--graph" in sys.argv:
        for i, layer in reversed(list(enumerate(LAYERS))):
            for m in sorted(layer):
                print(f"layer {i}  {m:<10} -> {' '.join(sorted(graph.get(m, ()))) or '-'}")
    for p in problems:
        print("layout: " + p)
    if problems:
        sys.exit(1)
    print(f"layout: ok ({len(root_files)} files at the root of src/, {len(graph)} modules, "
          f"every import points down)")


if __name__ == "__main__":
    main()
