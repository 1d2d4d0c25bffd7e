"""Rewrite protoc's absolute ``loyalty.v1`` imports so generated code lives under our package.

protoc emits ``from loyalty.v1 import x_pb2`` (and ``loyalty.v1.x_pb2`` module references in
stubs and descriptor builders), which only resolves if ``loyalty_engine/gen`` is on sys.path.
Rewriting them to ``loyalty_engine.gen.loyalty.v1`` keeps the generated code importable as a
normal subpackage. The serialized descriptors only contain ``loyalty/v1/x.proto`` paths and the
proto package ``loyalty.v1`` (never a ``_pb2`` name), so they are left untouched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TARGET_PACKAGE = "loyalty_engine.gen.loyalty.v1"
FROM_IMPORT = re.compile(r"\bfrom loyalty\.v1 import\b")
# The lookbehind keeps the rewrite idempotent: an already-prefixed reference is preceded by '.'.
MODULE_REFERENCE = re.compile(r"(?<![\w.])loyalty\.v1\.([a-z0-9_]+_pb2)\b")


def rewrite(source: str) -> str:
    """Return ``source`` with loyalty.v1 module references moved under the package."""
    source = FROM_IMPORT.sub(f"from {TARGET_PACKAGE} import", source)
    return MODULE_REFERENCE.sub(rf"{TARGET_PACKAGE}.\1", source)


def fix_tree(root: Path) -> int:
    """Rewrite every generated .py/.pyi file below ``root``; return how many files changed."""
    changed = 0
    for path in sorted(root.rglob("*")):
        if path.suffix not in {".py", ".pyi"} or not path.is_file():
            continue
        original = path.read_text(encoding="utf-8")
        updated = rewrite(original)
        if updated != original:
            path.write_text(updated, encoding="utf-8")
            changed += 1
    return changed


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path("loyalty_engine/gen")
    if not root.is_dir():
        print(f"fix_generated_imports: {root} is not a directory", file=sys.stderr)
        return 2
    changed = fix_tree(root)
    print(f"fix_generated_imports: rewrote imports in {changed} file(s) under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
