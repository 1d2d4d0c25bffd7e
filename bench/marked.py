"""BENCHMARKS.md: each benchmark owns the text between its two marks and nothing else."""

from __future__ import annotations

from pathlib import Path


def write_marked(path: Path, begin: str, end: str, block: str, new_section: str) -> None:
    """Put `block` between the marks in `path`; without them, append `new_section` and the
    marked block (`path` is created with a title if it does not exist)."""
    marked = f"{begin}\n{block}{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        path.write_text(head + marked + tail)
        return
    path.write_text(text.rstrip("\n") + "\n\n" + new_section.strip("\n") + "\n\n" + marked)
