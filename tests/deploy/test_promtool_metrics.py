"""``promtool check metrics`` finds nothing to fix in a live node's exposition (after traffic)."""

from __future__ import annotations

import subprocess

import httpx

from tests.deploy.tools import require_tool
from tests.support.processes import serve


def test_promtool_finds_nothing_to_fix_in_the_exposition() -> None:
    promtool = require_tool("promtool")
    with serve() as server:
        assert server.api("publish", channel="chat:lint", data=1).status_code == 200
        assert server.api("publish", channel="nope:x", data=1).status_code == 404  # an error
        exposition = httpx.get(server.url + "/metrics").text
    assert "kizuna_broker_operations_total" in exposition
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == ""
    assert lint.stderr.strip() == ""
