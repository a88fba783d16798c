"""Summarize a ``py-spy record --format raw`` profile: the hottest functions.

py-spy's raw format is one collapsed stack per line, ``frame;frame;...;leaf COUNT``,
each frame ``function (file:line)``. *Self* samples are those where a function is the
leaf (where the CPU actually was); *total* samples count every stack the function
appears in once (what it and its callees cost). Lines are dropped from frame names so
that one function is one row.

Run: ``python -m bench.profile bench/out/profile-kizuna-fanout.txt [--top 10]``
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Hot", "hottest", "markdown"]

_FRAME_LINE = re.compile(r":\d+\)$")
_SITE = ("site-packages/", "lib/python3")


@dataclass(frozen=True)
class Hot:
    function: str
    self_pct: float
    total_pct: float


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``, keeping a package hint."""
    frame = _FRAME_LINE.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    path = where.rstrip(")")
    for marker in _SITE:
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        if "/src/" in path:
            path = path.split("/src/", 1)[1]
    if path.startswith("python3") and "/" in path:
        path = path.split("/", 1)[1]
    return f"{name} ({path})" if path else name


def hottest(path: Path, top: int = 10) -> tuple[int, list[Hot]]:
    """(total samples, the ``top`` functions by self time)."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):  # py-spy's pid/thread header
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for function in set(frames):
            total_counts[function] += count
    if samples == 0:
        return 0, []
    hot = [
        Hot(fn, 100.0 * n / samples, 100.0 * total_counts[fn] / samples)
        for fn, n in self_counts.most_common(top)
    ]
    return samples, hot


def markdown(path: Path, top: int = 10) -> str:
    samples, hot = hottest(path, top)
    lines = [
        f"{samples} samples; self = CPU in the function itself, total = with its callees.",
        "",
        "| # | function | self % | total % |",
        "| ---: | --- | ---: | ---: |",
    ]
    for i, h in enumerate(hot, 1):
        lines.append(f"| {i} | `{h.function}` | {h.self_pct:.1f} | {h.total_pct:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    print(markdown(args.profile, args.top))


if __name__ == "__main__":
    main()
