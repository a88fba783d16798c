"""Runs kizuna.js's unit tests (``kizuna_*unit.test.mjs``) with Node's test runner."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_kizuna_js_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `apt-get install -y nodejs npm`")
    out = subprocess.run(
        [node, "--test", *(str(p) for p in sorted(HERE.glob("kizuna_*unit.test.mjs")))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", report, re.MULTILINE)
    assert passed and failed, report
    assert int(failed.group(1)) == 0
    assert int(passed.group(1)) >= 40, report  # both files' tests really ran
