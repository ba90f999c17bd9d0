#!/usr/bin/env python3
"""Every test docs/security.md names exists.

The table "How each promise is kept" names, in its last column, the tests
that fail if a promise breaks (`module::test_name`, or a bare test name).
Each must be a test function (or a module of per-major tests) in src/ or
tests/: a renamed or deleted test makes this fail, so the table never
points at a test that is gone.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Names in that column that are tools, not tests.
NOT_TESTS = {"pg_verifybackup"}


def named_tests(text: str) -> set[str]:
    start = text.index("## How each promise is kept")
    end = text.index("\n## ", start + 1)
    names = set()
    for row in text[start:end].splitlines():
        if not row.startswith("|") or row.startswith("|---"):
            continue
        last = row.strip().strip("|").split("|")[-1]
        for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_:]*)`", last):
            names.add(name.split("::")[-1])
    names.discard("test")
    return names - NOT_TESTS


def main() -> int:
    text = (ROOT / "docs/security.md").read_text()
    sources = "\n".join(
        p.read_text()
        for pattern in ("src/**/*.rs", "tests/**/*.rs")
        for p in ROOT.glob(pattern)
    )
    names = named_tests(text)
    missing = sorted(
        n
        for n in names
        if not re.search(rf"\b(fn|mod) {re.escape(n)}\b", sources)
        and not re.search(rf"pg_test!\({re.escape(n)}\)", sources)
    )
    if missing:
        print(f"docs/security.md names tests that do not exist: {', '.join(missing)}")
        return 1
    print(f"docs: ok ({len(names)} tests named in docs/security.md exist)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
