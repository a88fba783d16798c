"""The browser tests' harness: chromium driven through ``driver.mjs`` (playwright-core).

pytest keeps control of servers and proxies; the pages run in Debian's
``chromium`` (never a downloaded browser). Missing tools are a failure that
names the command to run, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import SERVER_ARGS
from tests.client.tcp_proxy import TcpProxy
from tests.support.processes import KizunaProcess

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent.parent / "test-artifacts"
STEP_TIMEOUT = 20.0
"""Seconds one driver step may take (a wait step adds its own timeout)."""


def _require_tools() -> str:
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed: run `npm ci --prefix tests/browser`")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `apt-get install -y nodejs npm`")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` (as root)")
    return chromium


class Browser:
    """One chromium with a fresh profile for the whole session; pages are named by the test.

    The driver's pipes are read on a thread, so the browser outlives each
    test's event loop; :meth:`call` hands the blocking step to a thread.
    """

    def __init__(self, chromium: str) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the driver
        self.proc = subprocess.Popen(
            ["node", str(HERE / "driver.mjs")],
            cwd=HERE,
            env={"CHROMIUM": chromium, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._next = 0
        self.pages: set[str] = set()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self._read(60.0)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def _read(self, timeout: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the browser driver said nothing for {timeout} s") from None
        if not line:
            self._log.seek(0)
            err = self._log.read().decode(errors="replace")
            raise RuntimeError(f"the browser driver exited: {err}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"browser step failed: {reply['error']}")
        return reply["value"]

    def call_sync(self, op: str, **args: Any) -> Any:
        with self._lock:
            assert self.proc.stdin is not None
            self._next += 1
            line = json.dumps({"id": self._next, "op": op, **args}).encode() + b"\n"
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
            value = self._read(STEP_TIMEOUT + args.get("timeout", 0) / 1000)
        if op == "open":
            self.pages.add(args["page"])
        elif op == "close":
            self.pages.discard(args["page"])
        return value

    async def call(self, op: str, **args: Any) -> Any:
        return await asyncio.to_thread(self.call_sync, op, **args)

    # Shorthands for what the tests do most.
    async def open(self, page: str, url: str) -> None:
        await self.call("open", page=page, url=url)

    async def wait(self, page: str, expression: str, timeout: float = 10.0) -> Any:
        return await self.call("wait", page=page, expression=expression, timeout=timeout * 1000)

    async def eval(self, page: str, expression: str) -> Any:
        return await self.call("eval", page=page, expression=expression)

    async def text(self, page: str, selector: str) -> str:
        value = await self.call("text", page=page, selector=selector)
        return str(value)

    async def log(self, page: str) -> list[str]:
        value = await self.call("log", page=page)
        return list(value)

    def close_pages(self) -> None:
        for page in list(self.pages):
            self.call_sync("close", page=page)

    def quit(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._pump_thread.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """One browser for every browser test (starting chromium costs seconds)."""
    b = Browser(_require_tools())
    try:
        yield b
    finally:
        b.quit()


@pytest.fixture
def browser(chromium: Browser) -> Iterator[Browser]:
    """The shared browser; the pages a test opened are closed when it ends."""
    try:
        yield chromium
    finally:
        chromium.close_pages()


@pytest.fixture(scope="module")
def kizuna() -> Iterator[KizunaProcess]:
    """One server per module (tests use their own rooms); a test may restart it."""
    with KizunaProcess(args=SERVER_ARGS) as server:
        yield server


@pytest.fixture
async def proxy(kizuna: KizunaProcess) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(kizuna.port) as p:
        yield p


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
