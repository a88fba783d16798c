"""Start real processes for tests: ``kizuna serve`` and ``redis-server``, each on a free port.

Nothing here mocks a component: the server is the installed ``kizuna``
console script in a subprocess, Redis is the ``redis-server`` binary on PATH.
Every process is stopped (and its output kept for the failure report) when
the test that started it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "API_KEY",
    "JWT_SECRET",
    "NAMESPACES_TOML",
    "SMALL_HISTORY",
    "KizunaProcess",
    "RedisProcess",
    "end_child",
    "free_port",
    "kizuna_command",
    "read_json_line",
    "serve",
    "wait_for_port",
    "write_config",
]

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
API_KEY = "test-api-key"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def kizuna_command() -> list[str]:
    script = Path(sys.executable).with_name("kizuna")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kizuna.cli"]


@dataclass
class KizunaProcess:
    """A ``kizuna serve`` subprocess. Use as a context manager, or call start()/stop()."""

    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    jwt_secret: str = JWT_SECRET
    api_key: str = API_KEY
    process: subprocess.Popen[bytes] | None = None
    _log: object = None
    _output: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def start(self, timeout: float = 15.0) -> KizunaProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KIZUNA_")}
        env.update(
            {
                "KIZUNA_JWT_SECRET": self.jwt_secret,
                "KIZUNA_API_KEY": self.api_key,
                "KIZUNA_GRPC_PORT": "0",
                "KIZUNA_LOG_LEVEL": "warning",
            }
        )
        env.update(self.env)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [
                *kizuna_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *self.args,
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"kizuna exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"kizuna not healthy after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the process printed (kept after it stopped)."""
        log = self._log
        if log is None:
            return self._output
        log.seek(0)  # type: ignore[attr-defined]
        data: bytes = log.read()  # type: ignore[attr-defined]
        return data.decode(errors="replace")

    def _release_log(self) -> None:
        if self._log is not None:
            self._output = self.output()
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._release_log()
        return proc.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release_log()

    def api(self, method: str, **params: object) -> httpx.Response:
        """Call the server HTTP API."""
        return httpx.post(
            f"{self.url}/api/{method}",
            json=params,
            headers={"Authorization": f"apikey {self.api_key}"},
            timeout=5,
        )

    def __enter__(self) -> KizunaProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisProcess:
    """A private ``redis-server`` on a free port (never the machine's default instance)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    args: Sequence[str] = ()
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="kizuna-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(
    *args: str, port: int | None = None, env: dict[str, str] | None = None
) -> Iterator[KizunaProcess]:
    """A running ``kizuna serve`` with these flags, stopped (and its output kept) after."""
    process = KizunaProcess(args=list(args), env=dict(env or {}))
    if port is not None:
        process.port = port
    with process:
        yield process


SMALL_HISTORY = 3
NAMESPACES_TOML = f"""
# The defaults (chat, notifications), plus a namespace whose history is too short to
# recover from after a few publications.
[namespaces.chat]

[namespaces.notifications]
presence = false
join_leave = false
allow_publish = false
history_size = 50

[namespaces.small]
history_size = {SMALL_HISTORY}
"""


def write_config(directory: Path, text: str = NAMESPACES_TOML) -> Path:
    """A TOML config file in ``directory`` (the test namespaces by default)."""
    path = directory / "kizuna.toml"
    path.write_text(text)
    return path


async def end_child(process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """End a driver subprocess the polite way — EOF on its stdin — or kill it after ``timeout``."""
    if process.returncode is None and process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await process.stdin.wait_closed()
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()


async def read_json_line(process: asyncio.subprocess.Process, what: str) -> Any:
    """The next JSON line a driver subprocess prints; fails with its stderr if it exited."""
    assert process.stdout is not None
    line = await process.stdout.readline()
    if not line:
        stderr = await process.stderr.read() if process.stderr is not None else b""
        raise AssertionError(f"{what} exited: {stderr.decode(errors='replace')}")
    return json.loads(line)
