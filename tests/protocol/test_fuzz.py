"""A short coverage-guided fuzz run of the decoders (atheris); the long one: fuzz/fuzz_codec.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_codec.py"


def test_decoders_survive_a_fuzz_run(tmp_path: Path) -> None:
    seeds = tmp_path / "corpus"
    seeds.mkdir()
    for i, seed in enumerate(
        [
            b'{"id":1,"method":"connect","params":{"token":"t"}}',
            b'{"id":2,"method":"subscribe","params":{"channel":"chat:a","since":{"offset":1,"epoch":"e"}}}',
            b'{"id":3,"method":"publish","params":{"channel":"chat:a","data":[1,{"x":null}]}}\n{"id":4,"method":"ping"}',
            b"W1siY2hhdDphIiwxLCJlIl1d",
        ]
    ):
        (seeds / f"seed{i}").write_bytes(seed)
    run = subprocess.run(
        [sys.executable, str(HARNESS), "-runs=30000", "-max_len=512", str(seeds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-3000:]
    assert "Done 30000 runs" in report
